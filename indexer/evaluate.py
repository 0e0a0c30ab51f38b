"""Retrieval evaluation (Chen et al. 2021, doi:10.12677/csa.2021.113052, section 4.2): embed
queries and gallery, rank, score.

Protocols: 'split' (default): queries are the test split, the gallery the train split, so a
query is never in its own gallery; 'all-vs-all': every image queries all the others.

Optional refinements (model/whitening.py, model/rerank.py), each measured on its own in
bench/results/retrieval.md: multi-scale descriptors, whitening learned on the gallery side
(the train split; all images for all-vs-all), database-side augmentation of the gallery and
alpha query expansion of the queries.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch
from torch.utils.data import DataLoader

from indexer.embedding import EmbeddingModel, load_embedding_model
from indexer.options import EvaluateOptions
from indexer.plots import plot_pr_curves
from model.checkpoint import Checkpoint
from model.datasets import (
    UNREADABLE,
    ImageFolderDataset,
    LabeledImages,
    Split,
    load_dataset,
    save_split,
    stratified_split,
)
from model.imageio import ImageDecodeError
from model.machine import machine_info
from model.metrics import DEFAULT_KS, RetrievalMetrics, evaluate_rankings
from model.rerank import alpha_query_expansion, database_augmentation
from model.whitening import learn_whitening

log = logging.getLogger(__name__)
PROTOCOLS = ("split", "all-vs-all")


@dataclass(frozen=True)
class Refinements:
    """Search-time refinements of an evaluation (all off by default)."""

    scales: tuple[float, ...] = (1.0,)  # multi-scale: descriptors at these size factors, summed
    whitening: str | None = None  # 'pca' or 'lw', learned on the gallery side
    whitening_dim: int | None = None  # reduce to this many dimensions
    dba: int = 0  # database-side augmentation with this many neighbours (0: off)
    qe: int = 0  # alpha query expansion with this many neighbours (0: off)
    alpha: float = 3.0

    def label(self) -> str:
        parts = []
        if self.scales != (1.0,):
            parts.append("ms" + "/".join(f"{s:g}" for s in self.scales))
        if self.whitening:
            parts.append(f"{self.whitening}-whiten{self.whitening_dim or ''}")
        if self.dba:
            parts.append(f"DBA{self.dba}")
        if self.qe:
            parts.append(f"aQE{self.qe}")
        return " + ".join(parts) or "none"


def refine(
    queries: np.ndarray,
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    refinements: Refinements,
    fingerprint: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Whitening (learned on the gallery), then DBA of the gallery, then alpha-QE of queries."""
    if refinements.whitening:
        whitening = learn_whitening(
            refinements.whitening, gallery, gallery_labels, refinements.whitening_dim, fingerprint
        )
        queries, gallery = whitening.apply(queries), whitening.apply(gallery)
    if refinements.dba:
        gallery = database_augmentation(gallery, refinements.dba, refinements.alpha)
    if refinements.qe:
        queries = alpha_query_expansion(queries, gallery, refinements.qe, refinements.alpha)
    return queries, gallery


ProgressFn = Callable[[int, int], None]


def embed_paths(
    model: EmbeddingModel,
    images: LabeledImages,
    batch_size: int = 32,
    num_workers: int = 2,
    progress: ProgressFn | None = None,
    cache_dir: Path | None = None,
    fingerprint: str = "",
) -> tuple[np.ndarray, np.ndarray]:
    """Descriptors of every image of `images` and a mask of those that could be read; cached on
    disk by model fingerprint + file list."""
    cache_file = None
    if cache_dir is not None and fingerprint:
        key = hashlib.sha256(
            ("\n".join(str(p) for p in images.paths) + fingerprint).encode()
        ).hexdigest()[:20]
        cache_file = cache_dir / f"embeddings-{fingerprint}-{key}.npz"
        if cache_file.is_file():
            if progress:
                progress(len(images), len(images))
            cached = np.load(cache_file)
            return cached["vectors"], cached["readable"]
    loader = DataLoader(
        ImageFolderDataset(images.paths, images.labels, model.transform),
        batch_size=batch_size,
        num_workers=num_workers,
    )
    chunks, readable = [], []
    done = 0
    for batch, labels in loader:
        chunks.append(model.embed_tensors(batch))
        readable.append(labels.numpy() != UNREADABLE)
        done += len(batch)
        if progress:
            progress(done, len(images))
    vectors = np.vstack(chunks) if chunks else np.zeros((0, model.dim), np.float32)
    mask = np.concatenate(readable) if readable else np.zeros(0, bool)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        with open(cache_file, "wb") as handle:
            np.savez(handle, vectors=vectors, readable=mask)
    return vectors, mask


def embed_multiscale(
    model: EmbeddingModel,
    images: LabeledImages,
    scales: Sequence[float],
    batch_size: int,
    num_workers: int,
    progress: ProgressFn | None,
    cache_dir: Path | None,
    fingerprint: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Descriptors summed over input sizes (each scale x the model's size), re-normalised."""
    total: np.ndarray | None = None
    readable: np.ndarray | None = None
    base = model.preprocessing
    for scale in scales:
        size = max(32, round(base.image_size * scale))
        scaled = (
            model
            if size == base.image_size
            else model.with_preprocessing(replace(base, image_size=size))
        )
        key = fingerprint if size == base.image_size else f"{fingerprint}-{size}px"
        vectors, ok = embed_paths(scaled, images, batch_size, num_workers, progress, cache_dir, key)
        total = vectors.astype(np.float64) if total is None else total + vectors
        readable = ok if readable is None else readable & ok
    assert total is not None and readable is not None
    norms = np.linalg.norm(total, axis=1, keepdims=True)
    return (total / np.maximum(norms, 1e-12)).astype(np.float32), readable


def rank_gallery(queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """Full rankings (Q x G gallery indices, best first) by inner product, exact."""
    index = faiss.IndexFlatIP(gallery.shape[1])
    index.add(np.ascontiguousarray(gallery, dtype=np.float32))
    _, ranked = index.search(np.ascontiguousarray(queries, dtype=np.float32), len(gallery))
    return ranked


def retrieval_metrics(
    queries: np.ndarray,
    query_labels: Sequence[int] | np.ndarray,
    gallery: np.ndarray,
    gallery_labels: Sequence[int] | np.ndarray,
    class_names: Sequence[str],
    exclude_self: bool = False,
    chunk: int = 1024,
) -> RetrievalMetrics:
    """Metrics over chunks of queries so that memory stays at chunk x gallery."""
    parts = []
    for start in range(0, len(queries), chunk):
        ranked = rank_gallery(queries[start : start + chunk], gallery)
        if exclude_self:
            own = np.arange(start, start + len(ranked))[:, None]
            ranked = ranked[ranked != own].reshape(len(ranked), len(gallery) - 1)
        parts.append(
            evaluate_rankings(
                ranked,
                query_labels[start : start + chunk],
                gallery_labels,
                class_names,
                queries_in_gallery=exclude_self,
            )
        )
    return merge_metrics(parts, query_labels, class_names)


def merge_metrics(
    parts: list[RetrievalMetrics],
    query_labels: Sequence[int] | np.ndarray,
    class_names: Sequence[str],
) -> RetrievalMetrics:
    """Combine per-chunk metrics (all are means over queries, so weight by query count)."""
    if len(parts) == 1:
        return parts[0]
    weights = np.array([p.n_queries for p in parts], dtype=float)
    aps = np.concatenate([p.per_query_ap for p in parts])
    labels = np.asarray(query_labels)

    def wmean(values: list[float]) -> float:
        return float(np.dot(values, weights) / weights.sum())

    ks = parts[0].map_at_k.keys()
    return RetrievalMetrics(
        map=float(aps.mean()),
        map_at_k={k: wmean([p.map_at_k[k] for p in parts]) for k in ks},
        precision_at_k={k: wmean([p.precision_at_k[k] for p in parts]) for k in ks},
        per_class_ap={
            class_names[int(c)]: float(aps[labels == c].mean()) for c in np.unique(labels)
        },
        per_query_ap=[float(a) for a in aps],
        pr_recall=parts[0].pr_recall,
        pr_precision=[
            float(v) for v in np.average([p.pr_precision for p in parts], axis=0, weights=weights)
        ],
        n_queries=int(weights.sum()),
        n_gallery=parts[0].n_gallery,
        n_without_relevant=sum(p.n_without_relevant for p in parts),
    )


def evaluation_split(
    ckpt: Checkpoint, images: LabeledImages, options: EvaluateOptions, out_dir: Path
) -> Split:
    """The split an evaluation uses (the options' seed and train fraction where given, else
    those the checkpoint was trained with), written to out_dir/split.json."""
    seed = int(ckpt.extra.get("split_seed", 0)) if options.seed is None else options.seed
    fraction = options.train_fraction
    fraction = float(ckpt.extra.get("train_fraction", 0.8)) if fraction is None else fraction
    split = stratified_split(images.labels, fraction, seed)
    save_split(split, images, out_dir / "split.json")
    return split


def evaluate_retrieval(
    checkpoint_path: Path,
    out_dir: Path,
    options: EvaluateOptions,
    *,
    refinements: Refinements | None = None,
    cache_dir: Path | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint on a dataset; writes results.json, split.json and pr_curve.png.

    The split defaults to the one the checkpoint was trained with (same seed and fraction).
    """
    protocol = options.protocol
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {list(PROTOCOLS)}")
    model, ckpt = load_embedding_model(checkpoint_path, options.device, options.runtime)
    images = load_dataset(options.dataset, options.data_root, options.per_class)
    out_dir = Path(out_dir)
    split = evaluation_split(ckpt, images, options, out_dir)

    refinements = refinements or Refinements()
    vectors, readable = embed_multiscale(
        model,
        images,
        refinements.scales,
        options.batch_size,
        options.num_workers,
        progress,
        cache_dir,
        f"{ckpt.fingerprint}-{model.runtime}",
    )
    labels = np.asarray(images.labels)
    if not readable.any():
        raise ImageDecodeError(
            f"cannot decode images: none of the {len(images)} images of {images.root} could be "
            f"read (first: {images.relative(images.paths[0])})"
        )
    if protocol == "split":
        q = np.asarray([i for i in split.test if readable[i]], dtype=np.int64)
        g = np.asarray([i for i in split.train if readable[i]], dtype=np.int64)
        if len(q) == 0 or len(g) == 0:
            raise ValueError("after skipping unreadable images, a split side is empty")
        queries, gallery = refine(vectors[q], vectors[g], labels[g], refinements, ckpt.fingerprint)
        metrics = retrieval_metrics(queries, labels[q], gallery, labels[g], images.class_names)
    else:
        keep = np.flatnonzero(readable)
        queries, gallery = refine(
            vectors[keep], vectors[keep], labels[keep], refinements, ckpt.fingerprint
        )
        metrics = retrieval_metrics(
            queries,
            labels[keep],
            gallery,
            labels[keep],
            images.class_names,
            exclude_self=True,
        )
    results = results_document(ckpt, checkpoint_path, images, split, protocol, metrics)
    results["refinements"] = {**asdict(refinements), "label": refinements.label()}
    results["unreadable"] = [images.relative(images.paths[i]) for i in np.flatnonzero(~readable)]
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    plot_pr_curves(
        {
            f"{ckpt.config.get('backbone')} {'+att' if ckpt.config.get('attention') else ''} "
            f"{ckpt.config.get('pooling')} (mAP {metrics.map:.3f})": (
                metrics.pr_recall,
                metrics.pr_precision,
            )
        },
        f"{images.name}: {protocol} protocol, {metrics.n_queries} queries, init {ckpt.init}",
        out_dir / "pr_curve.png",
    )
    return results


def results_document(
    ckpt: Checkpoint,
    checkpoint_path: Path,
    images: LabeledImages,
    split: Split,
    protocol: str,
    metrics: RetrievalMetrics,
) -> dict[str, Any]:
    """The results.json of an evaluation: figures, model, dataset, split, machine."""
    return {
        **metrics.summary(),
        "protocol": protocol,
        "ks": list(DEFAULT_KS),
        "model": {
            "checkpoint": str(Path(checkpoint_path).resolve()),
            "fingerprint": ckpt.fingerprint,
            "config": ckpt.config,
            "image_size": ckpt.preprocessing.image_size,
            "init": ckpt.init,
            "trained_on": ckpt.dataset,
            "epochs": ckpt.extra.get("epochs"),
        },
        "init": ckpt.init,
        "dataset": {
            "name": images.name,
            "root": str(images.root),
            "images": len(images),
            "classes": len(images.class_names),
        },
        "split": {"seed": split.seed, "train_fraction": split.train_fraction, "file": "split.json"},
        "machine": machine_info(),
        "torch_threads": torch.get_num_threads(),
    }


def format_results_table(results: dict[str, Any]) -> str:
    """A plain-text table of an evaluation's figures."""
    lines = [
        f"dataset {results['dataset']['name']} ({results['dataset']['images']} images), "
        f"protocol {results['protocol']}, {results['n_queries']} queries x "
        f"{results['n_gallery']} gallery, init {results['init']}",
        f"{'k':>5}  {'mAP@k':>7}  {'P@k':>7}",
    ]
    for k, value in results["map_at_k"].items():
        lines.append(f"{k:>5}  {value:7.4f}  {results['precision_at_k'][k]:7.4f}")
    worst = sorted(results["per_class_ap"].items(), key=lambda kv: kv[1])
    lines.append("per-class AP: " + ", ".join(f"{c} {v:.3f}" for c, v in worst))
    lines.append(f"mAP (full ranking): {results['map']:.4f}")
    return "\n".join(lines)
