"""Retrieval figures of an index as built (`rsir evaluate --on-index`): its vectors, its
FAISS type, its whitening, queried the way `rsir search` queries it.

Why beside indexer/evaluate.py: that one measures a checkpoint (plus refinements learned on
the spot); users search an index, so this measures what they get. Queries are labelled images
embedded by the index's own model and whitening; relevance is the indexed row's label equal to
the query's class name.

Protocols: 'split': queries are the test side of the checkpoint's split of the dataset, the
gallery is every indexed image that is not a query (matched by content hash), so indexing the
whole dataset or only its training side gives the same figures; 'all-vs-all': every image of
the dataset that is indexed queries all other indexed images. Rankings come from the index
(approximate for IVF/PQ/HNSW); gallery images a search did not return count as ranked last.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from indexer.engines import VectorIndex
from indexer.evaluate import (
    PROTOCOLS,
    ProgressFn,
    embed_paths,
    evaluation_split,
    merge_metrics,
    results_document,
)
from indexer.options import EvaluateOptions
from indexer.plots import plot_pr_curves
from indexer.search import Searcher
from model.datasets import LabeledImages, load_dataset
from model.imageio import ImageDecodeError
from model.metrics import RetrievalMetrics, evaluate_rankings

log = logging.getLogger(__name__)
RANKING_CELLS = 20_000_000  # queries x gallery ids held at once while ranking


def gallery_rows(store: VectorIndex) -> tuple[np.ndarray, list[str | None], list[str]]:
    """Ids (sorted), labels and content hashes of the index's live images."""
    from indexer.db import ImageRow, make_sessionmaker

    query = (
        select(ImageRow.id, ImageRow.label, ImageRow.content_hash)
        .where(ImageRow.model_fingerprint == store.fingerprint)
        .order_by(ImageRow.id)
    )
    with make_sessionmaker(store.engine)() as session:
        rows = session.execute(query).all()
    return (
        np.asarray([r[0] for r in rows], dtype=np.int64),
        [r[1] for r in rows],
        [r[2] for r in rows],
    )


def index_rankings(
    store: VectorIndex, queries: np.ndarray, gallery_ids: np.ndarray, own: np.ndarray
) -> np.ndarray:
    """Q x (G or G-1) positions into `gallery_ids`, best first, from the index's own search;
    `own[i]` (an id, or -1) is left out of query i's ranking; ids the search did not return
    follow in id order."""
    position = {int(i): p for p, i in enumerate(gallery_ids)}
    width = len(gallery_ids) - int((own >= 0).any())
    out = np.empty((len(queries), width), dtype=np.int64)
    step = max(1, RANKING_CELLS // max(1, store.ntotal))
    for start in range(0, len(queries), step):
        _, found = store.search(queries[start : start + step], store.ntotal)
        for row, ids in enumerate(found, start):
            ranked = [position[i] for i in ids.tolist() if i in position and i != own[row]]
            if len(ranked) < width:
                seen = np.zeros(len(gallery_ids), bool)
                seen[ranked] = True
                if own[row] >= 0:
                    seen[position[int(own[row])]] = True
                ranked.extend(np.flatnonzero(~seen).tolist())
            out[row] = ranked
    return out


def _file_hashes(images: LabeledImages) -> list[str]:
    return [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in images.paths]


def evaluate_index(
    searcher: Searcher,
    out_dir: Path,
    options: EvaluateOptions,
    *,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Evaluate the index `searcher` searches, its model embedding the labelled images of a
    dataset as queries; writes results.json, split.json and pr_curve.png like
    `evaluate_retrieval`. (The searcher was opened on a device and runtime; the options say
    the dataset, protocol, split, batches and decoding workers.)"""
    protocol = options.protocol
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {list(PROTOCOLS)}")
    model, ckpt, store = searcher.model, searcher.checkpoint, searcher.store
    images = load_dataset(options.dataset, options.data_root, options.per_class)
    out_dir = Path(out_dir)
    split = evaluation_split(ckpt, images, options, out_dir)

    ids, row_labels, row_hashes = gallery_rows(store)
    by_hash = {h: int(i) for i, h in zip(ids, row_hashes, strict=True)}
    chosen = split.test if protocol == "split" else list(range(len(images)))
    hashes = _file_hashes(images.subset(chosen))
    if protocol == "all-vs-all":  # only indexed images can query the others
        chosen = [i for i, h in zip(chosen, hashes, strict=True) if h in by_hash]
        hashes = [h for h in hashes if h in by_hash]
    queries_set = images.subset(chosen)
    vectors, readable = embed_paths(
        model, queries_set, options.batch_size, options.num_workers, progress
    )
    if not readable.any():
        raise ImageDecodeError(f"none of the {len(queries_set)} query images could be read")
    query_labels = np.asarray(queries_set.labels)[readable]
    vectors = vectors[readable]
    hashes = [h for h, ok in zip(hashes, readable, strict=True) if ok]

    if protocol == "split":  # the gallery: every indexed image that is not a query
        query_ids = {by_hash[h] for h in hashes if h in by_hash}
        keep = np.asarray([int(i) not in query_ids for i in ids], dtype=bool)
        ids, row_labels = ids[keep], [lab for lab, k in zip(row_labels, keep, strict=True) if k]
        own = np.full(len(vectors), -1, dtype=np.int64)
    else:
        own = np.asarray([by_hash[h] for h in hashes], dtype=np.int64)
    if len(ids) == 0:
        raise ValueError(f"the index in {store.index_dir} holds no gallery image for these queries")
    name_to_class = {name: c for c, name in enumerate(images.class_names)}
    gallery_labels = np.asarray([name_to_class.get(lab or "", -1) for lab in row_labels])
    ranked = index_rankings(store, vectors, ids, own)
    metrics = _metrics(ranked, query_labels, gallery_labels, images.class_names, protocol)

    results = results_document(ckpt, searcher.checkpoint_path, images, split, protocol, metrics)
    results["index"] = {
        "dir": str(Path(store.index_dir).resolve()),
        "fingerprint": store.fingerprint,
        "factory": store.factory,
        "dim": model.dim,
        "ntotal": store.ntotal,
        "whitening": dict(model.whitening.identity()) if model.whitening is not None else None,
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    plot_pr_curves(
        {f"index {store.fingerprint} (mAP {metrics.map:.3f})": (
            metrics.pr_recall, metrics.pr_precision
        )},
        f"{images.name} on index: {protocol} protocol, {metrics.n_queries} queries",
        out_dir / "pr_curve.png",
    )  # fmt: skip
    return results


def _metrics(
    ranked: np.ndarray,
    query_labels: np.ndarray,
    gallery_labels: np.ndarray,
    class_names: list[str],
    protocol: str,
    chunk: int = 1024,
) -> RetrievalMetrics:
    parts = [
        evaluate_rankings(
            ranked[start : start + chunk],
            query_labels[start : start + chunk],
            gallery_labels,
            class_names,
            queries_in_gallery=protocol == "all-vs-all",
        )
        for start in range(0, len(ranked), chunk)
    ]
    return merge_metrics(parts, query_labels, class_names)
