"""Images decoded once into memory, and the batch orders (samplers) the methods need.

Why a bank: every epoch (and every method of a benchmark) reuses the same resized images, so
decoding them once is much cheaper than a DataLoader per epoch on a small CPU. Pixels are kept
as uint8 (3 x S x S each), exactly what `Preprocessing.eval_transform` sees before
normalisation, so training, evaluation and inference see the same pixels.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from model.imageio import ImageDecodeError, decode_image
from model.transforms import Preprocessing

log = logging.getLogger(__name__)


@dataclass
class ImageBank:
    """N x 3 x S x S uint8 pixels, labels, a content hash per image (the map-cache key) and
    which images could be read.

    An unreadable image (the embedder's rule, model.datasets.ImageFolderDataset: warn, skip,
    count) keeps its place as black pixels with `readable` False, so that split indices stay
    valid; training and evaluation take only `usable(...)` positions.
    """

    pixels: torch.Tensor
    labels: torch.Tensor
    hashes: list[str]
    image_size: int
    readable: torch.Tensor

    def __len__(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def unreadable(self) -> int:
        """How many images could not be read."""
        return int((~self.readable).sum())

    def usable(self, indices: Sequence[int]) -> list[int]:
        """The positions among `indices` whose image could be read."""
        return [int(i) for i in indices if bool(self.readable[int(i)])]

    def normalized(
        self, indices: torch.Tensor | Sequence[int], prep: Preprocessing
    ) -> torch.Tensor:
        """Float images, normalised like `prep.eval_transform()`."""
        index = torch.as_tensor(indices, dtype=torch.long).to(self.pixels.device)
        return prep.normalize(self.pixels[index])

    def to(self, device: torch.device) -> ImageBank:
        """The same images with pixels and labels on `device` (a GPU: decoded once, sent once,
        so that batches are cut and normalised there instead of on the host every step)."""
        if self.pixels.device == device:
            return self
        return ImageBank(
            self.pixels.to(device), self.labels.to(device), self.hashes, self.image_size,
            self.readable,
        )  # fmt: skip


class _Decode(Dataset[tuple[torch.Tensor, str, bool]]):
    def __init__(self, paths: Sequence[Path], size: int) -> None:
        self.paths = list(paths)
        self.size = size
        self.resize = T.Resize((size, size), antialias=True)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str, bool]:
        path = Path(self.paths[index])
        try:
            data = path.read_bytes()
            image = self.resize(decode_image(data))
        except (ImageDecodeError, OSError) as exc:
            log.warning("skipping unreadable image %s: %s", path, exc)
            return torch.zeros(3, self.size, self.size, dtype=torch.uint8), "", False
        return T.functional.pil_to_tensor(image), hashlib.sha1(data).hexdigest()[:20], True


def load_image_bank(
    paths: Sequence[Path], labels: Sequence[int], image_size: int, num_workers: int = 0
) -> ImageBank:
    """Decode and resize every image once (worker processes when num_workers > 0); an image
    that cannot be read is logged, marked unreadable and counted, never fatal."""
    loader = DataLoader(
        _Decode(paths, image_size), batch_size=64, num_workers=num_workers, shuffle=False
    )
    chunks: list[torch.Tensor] = []
    hashes: list[str] = []
    readable: list[torch.Tensor] = []
    for pixels, digest, ok in loader:
        chunks.append(pixels)
        hashes.extend(digest)
        readable.append(ok)
    stacked = (
        torch.cat(chunks)
        if chunks
        else torch.zeros(0, 3, image_size, image_size, dtype=torch.uint8)
    )
    mask = torch.cat(readable) if readable else torch.zeros(0, dtype=torch.bool)
    bank = ImageBank(
        stacked, torch.as_tensor(list(labels), dtype=torch.long), hashes, image_size, mask
    )
    if bank.unreadable:
        log.warning("%d of %d images could not be read and are skipped", bank.unreadable, len(bank))
    return bank


Sampler = Callable[[Sequence[int], int, torch.Generator], Iterator[list[int]]]
"""A method's batch order: (labels of the training images, batch size, generator) -> batches
of positions into those labels."""


def shuffled_batches(
    labels: Sequence[int], batch_size: int, generator: torch.Generator
) -> Iterator[list[int]]:
    """Positions 0..N-1 in a random order, cut into batches (last one may be short)."""
    count = len(labels)
    order = torch.randperm(count, generator=generator).tolist()
    for start in range(0, count, batch_size):
        batch = order[start : start + batch_size]
        if len(batch) > 1 or count == 1:  # a batch of one breaks batch-norm
            yield batch


def paired_batches(
    labels: Sequence[int], batch_size: int, generator: torch.Generator
) -> Iterator[list[int]]:
    """Batches whose adjacent positions (0,1), (2,3), ... share a label (LAFE's sampler).

    Each class's positions are shuffled and cut into pairs; a class with an odd count pairs its
    last image with a random other of the same class. Pairs are shuffled and packed into batches
    of batch_size (rounded down to even, at least 2).
    """
    by_label: dict[int, list[int]] = {}
    for position, label in enumerate(labels):
        by_label.setdefault(int(label), []).append(position)
    pairs: list[tuple[int, int]] = []
    for members in by_label.values():
        order = [members[i] for i in torch.randperm(len(members), generator=generator).tolist()]
        if len(order) == 1:
            pairs.append((order[0], order[0]))
            continue
        if len(order) % 2:
            partner = order[int(torch.randint(0, len(order) - 1, (1,), generator=generator))]
            order.append(partner)
        pairs.extend((order[i], order[i + 1]) for i in range(0, len(order), 2))
    pair_order = torch.randperm(len(pairs), generator=generator).tolist()
    per_batch = max(batch_size // 2, 1)
    for start in range(0, len(pairs), per_batch):
        chosen = [pairs[i] for i in pair_order[start : start + per_batch]]
        yield [position for pair in chosen for position in pair]
