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
from indexer.evaluate import ProgressFn, embed_paths
from indexer.options import WhitenOptions
from model.datasets import load_dataset, stratified_split
from model.imageio import ImageDecodeError
from model.whitening import Whitening, learn_whitening

log = logging.getLogger(__name__)


def learn_whitening_artifact(
    checkpoint_path: Path,
    out: Path,
    options: WhitenOptions,
    *,
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> Whitening:
    """Embed the labelled images with the checkpoint, learn `options.whitening_method` ('lw'
    or 'pca') reducing to `options.whitening_dim`, save it to `out` bound to the checkpoint's
    fingerprint, and return it."""
    model, ckpt = load_embedding_model(checkpoint_path, options.device, options.runtime)
    images = load_dataset(options.dataset, options.data_root, options.per_class)
    if options.whitening_train_split:
        split = stratified_split(
            images.labels,
            float(ckpt.extra.get("train_fraction", 0.8)),
            int(ckpt.extra.get("split_seed", 0)),
        )
        images = images.subset(split.train)
    vectors, readable = embed_paths(
        model, images, options.batch_size, options.num_workers, progress
    )
    if not readable.any():
        raise ImageDecodeError(f"none of the {len(images)} images of {images.root} could be read")
    labels = np.asarray(images.labels)[readable]
    method = options.whitening_method
    whitening = learn_whitening(
        method, vectors[readable], labels, options.whitening_dim, ckpt.fingerprint, seed
    )
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
