"""Where training batches come from: decoded images, or the cached output of frozen stages.

With the first `freeze_stages` trunk stages frozen (eval mode, no gradients), their output for
an image never changes during training, so it is computed once and kept (float16) in memory;
every step then runs only the trainable stages. On 2 CPU cores this makes fine-tuning several
times faster. Augmentation moves to the cached maps: the 8 right-angle rotations and flips,
and a random crop of at least `min_scale` of the area resized back (scale), as the pixel path
does on images.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from model.backbones import Trunk
from model.datasets import UNREADABLE, ImageFolderDataset, LabeledImages
from model.transforms import Preprocessing


class TrainInputs(Protocol):
    """Batches of (inputs of trunk stage `start_stage`, labels) for indices of the train set."""

    start_stage: int

    def batches(
        self, indices: Sequence[int], batch_size: int, augment: bool, desc: str = ""
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


class PixelInputs:
    """Images decoded (and augmented) on DataLoader workers at every step."""

    start_stage = 0

    def __init__(
        self,
        images: LabeledImages,
        preprocessing: Preprocessing,
        min_scale: float,
        num_workers: int,
    ) -> None:
        self.train_set = ImageFolderDataset(
            images.paths, images.labels, preprocessing.train_transform(min_scale)
        )
        self.eval_set = ImageFolderDataset(
            images.paths, images.labels, preprocessing.eval_transform()
        )
        self.num_workers = num_workers

    def batches(
        self, indices: Sequence[int], batch_size: int, augment: bool, desc: str = ""
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        dataset = self.train_set if augment else self.eval_set
        loader = DataLoader(
            torch.utils.data.Subset(dataset, list(indices)),
            batch_size=batch_size,
            shuffle=False,
            num_workers=self.num_workers,
        )
        yield from loader


class CachedStageInputs:
    """The frozen stages' output for every train image, computed once (float16, in memory)."""

    def __init__(
        self,
        maps: torch.Tensor,
        labels: torch.Tensor,
        frozen_stages: int,
        min_scale: float,
        seed: int,
    ) -> None:
        self.maps = maps
        self.labels = labels
        self.start_stage = frozen_stages
        self.min_scale = min_scale
        self.rng = random.Random(seed)

    def batches(
        self, indices: Sequence[int], batch_size: int, augment: bool, desc: str = ""
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(indices), batch_size):
            chosen = torch.as_tensor(list(indices[start : start + batch_size]), dtype=torch.long)
            maps = self.maps[chosen].float()
            if augment:
                maps = torch.stack([self._augment(m) for m in maps])
            yield maps.contiguous(memory_format=torch.channels_last), self.labels[chosen]

    def _augment(self, fmap: torch.Tensor) -> torch.Tensor:
        """One of the 8 dihedral transforms, then a random scale crop resized back."""
        fmap = torch.rot90(fmap, self.rng.randrange(4), dims=(-2, -1))
        if self.rng.random() < 0.5:
            fmap = fmap.flip(-1)
        if self.min_scale < 1.0:
            fmap = random_scale_crop(fmap, self.min_scale, self.rng)
        return fmap


def stage_maps(
    trunk: Trunk,
    frozen_stages: int,
    images: LabeledImages,
    preprocessing: Preprocessing,
    num_workers: int,
    device: torch.device,
    cache_dir: Path | None = None,
    weights_id: str = "",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The output of the first `frozen_stages` stages for every image (float16) and the labels
    (UNREADABLE where an image could not be decoded).

    With `cache_dir`, maps are also kept on disk, one file per image, keyed by the image path,
    the stages' weights (`weights_id`, e.g. the ImageNet file) and the preprocessing: runs that
    share the frozen stages (other seeds, other heads) do not compute them again.
    """
    key = hashlib.sha256(
        json.dumps([weights_id, frozen_stages, preprocessing.to_dict()]).encode()
    ).hexdigest()[:16]
    folder = cache_dir / key if cache_dir is not None else None

    def file_for(path: Path) -> Path | None:
        if folder is None:
            return None
        return folder / (hashlib.sha256(str(path).encode()).hexdigest()[:24] + ".pt")

    maps: list[torch.Tensor | None] = [None] * len(images)
    labels = torch.as_tensor(images.labels, dtype=torch.long).clone()
    missing = []
    for i, path in enumerate(images.paths):
        cached = file_for(path)
        if cached is not None and cached.is_file():
            maps[i] = torch.load(cached, weights_only=True)
        else:
            missing.append(i)
    if missing:
        todo = images.subset(missing)
        loader = DataLoader(
            ImageFolderDataset(todo.paths, todo.labels, preprocessing.eval_transform()),
            batch_size=32,
            num_workers=num_workers,
        )
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
        done = 0
        for stage in trunk.stages[:frozen_stages]:
            stage.eval()  # frozen: running batch-norm statistics, never the batch's own
        with torch.inference_mode():
            for batch, batch_labels in tqdm(
                loader, desc="caching the frozen stages", unit="batch", dynamic_ncols=True
            ):
                x = batch.to(device, memory_format=torch.channels_last)
                for stage in trunk.stages[:frozen_stages]:
                    x = stage(x)
                out = x.to("cpu", torch.float16).contiguous()
                for j in range(len(out)):
                    i = missing[done + j]
                    maps[i] = out[j].clone()
                    labels[i] = batch_labels[j]
                    cached = file_for(images.paths[i])
                    if cached is not None and int(batch_labels[j]) != UNREADABLE:
                        torch.save(maps[i], cached)
                done += len(out)
    return torch.stack([m for m in maps if m is not None]), labels


def random_scale_crop(fmap: torch.Tensor, min_scale: float, rng: random.Random) -> torch.Tensor:
    """A random square-ish window of at least `min_scale` of the area, resized to the input's
    size (C x H x W)."""
    _, h, w = fmap.shape
    area = rng.uniform(min_scale, 1.0)
    side_h = max(1, min(h, round(h * math.sqrt(area))))
    side_w = max(1, min(w, round(w * math.sqrt(area))))
    top = rng.randrange(h - side_h + 1)
    left = rng.randrange(w - side_w + 1)
    window = fmap[:, top : top + side_h, left : left + side_w]
    if (side_h, side_w) == (h, w):
        return fmap
    return F.interpolate(window[None], size=(h, w), mode="bilinear", align_corners=False)[0]
