"""Benchmark layouts (UCM, NWPU-RESISC45, SATREM, any <class>/<image> folder) and seeded splits."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from model.imageio import ImageDecodeError, read_image

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".gif", ".webp"})
DATASET_KINDS = ("ucm", "nwpu", "satrem", "folder")

# Where each layout's class folders may sit below the root the user gives.
_CANDIDATE_SUBDIRS: dict[str, tuple[str, ...]] = {
    "ucm": ("UCMerced_LandUse/Images", "Images", ""),
    "nwpu": ("NWPU-RESISC45", "NWPU-RESISC12", ""),
    "satrem": ("SATREM", ""),
    "folder": ("",),
}
_EXPECTED_CLASSES = {"ucm": 21, "nwpu": 45, "satrem": 20}

WHERE_TO_GET = (
    "UC Merced Land Use: http://weegee.vision.ucmerced.edu/datasets/landuse.html "
    "(unzip so that <root>/UCMerced_LandUse/Images/<class>/<class>NN.tif exists); "
    "NWPU-RESISC45: https://gcheng-nwpu.github.io/#Datasets "
    "(unzip so that <root>/NWPU-RESISC45/<class>/<class>_NNN.jpg exists)."
)


class DatasetNotFoundError(FileNotFoundError):
    """No images in the expected layout under the given root."""


@dataclass
class LabeledImages:
    """Image paths with integer labels, in a stable (sorted) order."""

    name: str
    root: Path
    paths: list[Path]
    labels: list[int]
    class_names: list[str]
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: Sequence[int]) -> LabeledImages:
        """The images at `indices`, same classes."""
        return LabeledImages(
            self.name,
            self.root,
            [self.paths[i] for i in indices],
            [self.labels[i] for i in indices],
            self.class_names,
            list(self.notes),
        )

    def relative(self, path: Path) -> str:
        """Path relative to the dataset root, with forward slashes (stable across machines)."""
        return path.relative_to(self.root).as_posix()


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def resolve_layout_root(kind: str, root: Path) -> Path:
    """The folder whose subfolders are the classes, for this layout under `root`."""
    if kind not in _CANDIDATE_SUBDIRS:
        raise ValueError(f"unknown dataset {kind!r}; choose one of {list(DATASET_KINDS)}")
    for sub in _CANDIDATE_SUBDIRS[kind]:
        candidate = root / sub if sub else root
        if candidate.is_dir() and any(
            d.is_dir() and any(_is_image(f) for f in d.iterdir()) for d in candidate.iterdir()
        ):
            return candidate
    raise DatasetNotFoundError(
        f"no {kind} images found under {root} (looked for <class>/<image> in "
        f"{[str(root / s) for s in _CANDIDATE_SUBDIRS[kind]]}). Where to get them: {WHERE_TO_GET}"
    )


def discover_dataset(kind: str, root: Path | str) -> LabeledImages:
    """All images of a dataset laid out as <class>/<image>, classes sorted by name."""
    base = resolve_layout_root(kind, Path(root))
    class_dirs = sorted(d for d in base.iterdir() if d.is_dir())
    paths: list[Path] = []
    labels: list[int] = []
    class_names: list[str] = []
    for class_dir in class_dirs:
        files = sorted(f for f in class_dir.iterdir() if _is_image(f))
        if not files:
            continue
        label = len(class_names)
        class_names.append(class_dir.name)
        paths.extend(files)
        labels.extend([label] * len(files))
    notes = []
    expected = _EXPECTED_CLASSES.get(kind)
    if expected is not None and expected != len(class_names):
        notes.append(f"{kind} normally has {expected} classes; found {len(class_names)} in {base}")
    return LabeledImages(kind, base, paths, labels, class_names, notes)


def load_dataset(kind: str, root: Path | str, per_class: int | None = None) -> LabeledImages:
    """The dataset (its notes logged), or its class-balanced subset of `per_class` a class."""
    images = discover_dataset(kind, root)
    for note in images.notes:
        log.info(note)
    return limit_per_class(images, per_class) if per_class else images


def limit_per_class(
    images: LabeledImages, per_class: int, classes: Sequence[str] | None = None
) -> LabeledImages:
    """A class-balanced subset: the first `per_class` images of each (chosen) class."""
    wanted = set(classes) if classes is not None else set(images.class_names)
    counts: dict[int, int] = {}
    keep: list[int] = []
    for i, label in enumerate(images.labels):
        if images.class_names[label] in wanted and counts.get(label, 0) < per_class:
            counts[label] = counts.get(label, 0) + 1
            keep.append(i)
    subset = images.subset(keep)
    # Re-number labels so that the subset's classes are 0..K-1.
    used = sorted({subset.labels[i] for i in range(len(subset))})
    remap = {old: new for new, old in enumerate(used)}
    subset.labels = [remap[label] for label in subset.labels]
    subset.class_names = [images.class_names[old] for old in used]
    return subset


@dataclass(frozen=True)
class Split:
    """A deterministic stratified split: indices into a LabeledImages."""

    train: list[int]
    test: list[int]
    seed: int
    train_fraction: float


def stratified_split(labels: Sequence[int], train_fraction: float = 0.8, seed: int = 0) -> Split:
    """Per class, a seeded shuffle, the first round(fraction * n) to train (at least one each)."""
    if not 0.0 < train_fraction < 1.0:
        raise ValueError("train_fraction must be between 0 and 1")
    rng = np.random.default_rng(seed)
    label_array = np.asarray(labels)
    train: list[int] = []
    test: list[int] = []
    for label in np.unique(label_array):
        members = np.flatnonzero(label_array == label)
        members = members[rng.permutation(len(members))]
        n_train = round(train_fraction * len(members))
        n_train = min(max(n_train, 1), max(len(members) - 1, 1))
        train.extend(int(i) for i in members[:n_train])
        test.extend(int(i) for i in members[n_train:])
    return Split(sorted(train), sorted(test), seed, train_fraction)


def save_split(split: Split, images: LabeledImages, path: Path) -> None:
    """Write the split as JSON with paths relative to the dataset root."""
    payload = {
        "dataset": images.name,
        "root": str(images.root),
        "seed": split.seed,
        "train_fraction": split.train_fraction,
        "class_names": images.class_names,
        "train": [images.relative(images.paths[i]) for i in split.train],
        "test": [images.relative(images.paths[i]) for i in split.test],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1))


def load_split(path: Path, images: LabeledImages) -> Split:
    """Read a split saved by `save_split` back as indices into `images`."""
    payload = json.loads(path.read_text())
    position = {images.relative(p): i for i, p in enumerate(images.paths)}
    try:
        train = [position[p] for p in payload["train"]]
        test = [position[p] for p in payload["test"]]
    except KeyError as exc:
        raise ValueError(f"split {path} names an image not in the dataset: {exc}") from None
    return Split(train, test, int(payload["seed"]), float(payload["train_fraction"]))


UNREADABLE = -1


class ImageFolderDataset(Dataset[tuple[torch.Tensor, int]]):
    """Decodes images (any format model.imageio reads) and applies a transform; yields (x, y).

    An image that cannot be read yields a black tensor with label UNREADABLE (-1) and a
    warning, so one bad file in a benchmark never ends a run; callers drop those items.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        labels: Sequence[int],
        transform: Callable[[Image.Image], torch.Tensor],
    ) -> None:
        self.paths = list(paths)
        self.labels = list(labels)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        try:
            return self.transform(read_image(self.paths[index])), self.labels[index]
        except (ImageDecodeError, OSError) as exc:
            log.warning("skipping unreadable image %s: %s", self.paths[index], exc)
            return self.transform(Image.new("RGB", (8, 8))), UNREADABLE
