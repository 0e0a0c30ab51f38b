"""Images decoded once into memory, and the batch orders the methods need.

Why a bank: every epoch (and every method of a benchmark) reuses the same resized images, so
decoding them once is much cheaper than a DataLoader per epoch on a small CPU. Pixels are kept
as uint8 (3 x S x S each), exactly what `Preprocessing.eval_transform` sees before
normalisation, so training, evaluation and inference see the same pixels.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from model.imageio import decode_image
from model.transforms import Preprocessing


@dataclass
class ImageBank:
    """N x 3 x S x S uint8 pixels, labels and a content hash per image (the map-cache key)."""

    pixels: torch.Tensor
    labels: torch.Tensor
    hashes: list[str]
    image_size: int

    def __len__(self) -> int:
        return int(self.pixels.shape[0])

    def normalized(
        self, indices: torch.Tensor | Sequence[int], prep: Preprocessing
    ) -> torch.Tensor:
        """Float images, normalised like `prep.eval_transform()`."""
        x = self.pixels[torch.as_tensor(indices, dtype=torch.long)].float().div_(255.0)
        mean = torch.tensor(prep.mean).view(1, 3, 1, 1)
        std = torch.tensor(prep.std).view(1, 3, 1, 1)
        return (x - mean) / std


class _Decode(Dataset[tuple[torch.Tensor, str]]):
    def __init__(self, paths: Sequence[Path], size: int) -> None:
        self.paths = list(paths)
        self.resize = T.Resize((size, size), antialias=True)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        data = Path(self.paths[index]).read_bytes()
        image = self.resize(decode_image(data))
        return T.functional.pil_to_tensor(image), hashlib.sha1(data).hexdigest()[:20]


def pil_to_pixels(image: Image.Image, size: int) -> torch.Tensor:
    """One RGB image resized as the bank stores it (3 x S x S uint8)."""
    resized = T.Resize((size, size), antialias=True)(image.convert("RGB"))
    return T.functional.pil_to_tensor(resized)


def load_image_bank(
    paths: Sequence[Path], labels: Sequence[int], image_size: int, num_workers: int = 0
) -> ImageBank:
    """Decode and resize every image once (worker processes when num_workers > 0)."""
    loader = DataLoader(
        _Decode(paths, image_size), batch_size=64, num_workers=num_workers, shuffle=False
    )
    chunks: list[torch.Tensor] = []
    hashes: list[str] = []
    for pixels, digest in loader:
        chunks.append(pixels)
        hashes.extend(digest)
    stacked = (
        torch.cat(chunks)
        if chunks
        else torch.zeros(0, 3, image_size, image_size, dtype=torch.uint8)
    )
    return ImageBank(stacked, torch.as_tensor(list(labels), dtype=torch.long), hashes, image_size)


def shuffled_batches(
    count: int, batch_size: int, generator: torch.Generator
) -> Iterator[list[int]]:
    """Positions 0..count-1 in a random order, cut into batches (last one may be short)."""
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
