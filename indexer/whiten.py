"""Learn a whitening artifact for a checkpoint from labelled images (`rsir whiten`).

Why a separate step: whitening is learned once, on images whose classes are known (Lw needs
matching pairs), and then reused by every index of that checkpoint and by their queries; the
archive being indexed has no labels to learn from. With `train_split`, only the training side
of the split that `rsir evaluate` uses is seen, so that an evaluation on the test side stays
honest.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from indexer.embedding import load_embedding_model
from indexer.evaluate import ProgressFn, embed_paths, load_eval_images
from model.datasets import stratified_split
from model.imageio import ImageDecodeError
from model.whitening import Whitening, learn_whitening

log = logging.getLogger(__name__)


def learn_whitening_artifact(
    *,
    checkpoint_path: Path,
    dataset: str,
    root: Path,
    method: str,
    dim: int | None,
    out: Path,
    per_class: int | None = None,
    train_split: bool = False,
    batch_size: int = 32,
    num_workers: int = 2,
    device: str = "auto",
    runtime: str = "auto",
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> Whitening:
    """Embed the labelled images with the checkpoint, learn `method` ('lw' or 'pca') reducing
    to `dim`, save it to `out` bound to the checkpoint's fingerprint, and return it."""
    model, ckpt = load_embedding_model(checkpoint_path, device, runtime)
    images = load_eval_images(dataset, root, per_class)
    if train_split:
        split = stratified_split(
            images.labels,
            float(ckpt.extra.get("train_fraction", 0.8)),
            int(ckpt.extra.get("split_seed", 0)),
        )
        images = images.subset(split.train)
    vectors, readable = embed_paths(model, images, batch_size, num_workers, progress)
    if not readable.any():
        raise ImageDecodeError(f"none of the {len(images)} images of {images.root} could be read")
    labels = np.asarray(images.labels)[readable]
    whitening = learn_whitening(method, vectors[readable], labels, dim, ckpt.fingerprint, seed)
    whitening.save(Path(out))
    log.info(
        "%s whitening %d -> %d learned on %d images for model %s: %s",
        method,
        whitening.input_dim,
        whitening.dim,
        len(labels),
        ckpt.fingerprint,
        out,
    )
    return whitening
