"""Retrieval metrics: AP over a full ranking, mAP, mAP@k, P@k, per-class AP, PR curve.

A retrieved item is relevant when it has the query's class. AP@k follows the usual retrieval
definition: the mean of precision at each relevant rank within the top k, divided by
min(k, number of relevant items in the gallery).

One convention for a query with no relevant image in the gallery (its class is absent, or
all-vs-all left it alone in its class): it stays in every figure, scoring 0 (AP 0, AP@k 0,
P@k 0, precision 0 at every recall level of the PR curve), and `n_without_relevant` counts
such queries, so that mAP and the curve average over the same queries and a reader sees how
many could not score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_KS = (5, 10, 20, 50, 100)
NO_RELEVANT_CONVENTION = (
    "a query with no relevant gallery image counts in every figure with AP 0, "
    "P@k 0 and precision 0 at every recall level"
)


def average_precision(relevant: np.ndarray, total_relevant: int | None = None) -> float:
    """AP of one ranking given its 0/1 relevance in rank order (non-interpolated).

    total_relevant defaults to the relevant items in the ranking (full ranking); pass the
    gallery's count when the ranking is truncated.
    """
    rel = np.asarray(relevant, dtype=bool)
    n_rel = int(rel.sum()) if total_relevant is None else int(total_relevant)
    if n_rel == 0:
        return 0.0
    hits = np.cumsum(rel)
    ranks = np.flatnonzero(rel) + 1
    return float((hits[rel] / ranks).sum() / n_rel)


def average_precision_at_k(relevant: np.ndarray, k: int, total_relevant: int) -> float:
    """AP@k: precision at each relevant rank in the top k, over min(k, total relevant)."""
    denominator = min(k, total_relevant)
    if denominator == 0:
        return 0.0
    rel = np.asarray(relevant[:k], dtype=bool)
    hits = np.cumsum(rel)
    ranks = np.flatnonzero(rel) + 1
    return float((hits[rel] / ranks).sum() / denominator)


def precision_at_k(relevant: np.ndarray, k: int) -> float:
    """Fraction of the top k that is relevant."""
    return float(np.asarray(relevant[:k], dtype=bool).sum() / k)


@dataclass
class RetrievalMetrics:
    """All figures of one evaluation."""

    map: float
    map_at_k: dict[int, float]
    precision_at_k: dict[int, float]
    per_class_ap: dict[str, float]
    per_query_ap: list[float]
    pr_recall: list[float]
    pr_precision: list[float]
    n_queries: int
    n_gallery: int
    n_without_relevant: int  # queries with no relevant gallery image: counted, scoring 0

    def summary(self) -> dict[str, object]:
        """JSON-friendly figures (per-query APs left out)."""
        return {
            "map": self.map,
            "map_at_k": {str(k): v for k, v in self.map_at_k.items()},
            "precision_at_k": {str(k): v for k, v in self.precision_at_k.items()},
            "per_class_ap": self.per_class_ap,
            "n_queries": self.n_queries,
            "n_gallery": self.n_gallery,
            "n_queries_without_relevant": self.n_without_relevant,
            "no_relevant_convention": NO_RELEVANT_CONVENTION,
            "pr_curve": {"recall": self.pr_recall, "precision": self.pr_precision},
        }


def relevance_matrix(
    ranked_ids: np.ndarray,
    query_labels: Sequence[int] | np.ndarray,
    gallery_labels: Sequence[int] | np.ndarray,
) -> np.ndarray:
    """Q x R booleans: whether the gallery item at each rank has the query's class."""
    gallery = np.asarray(gallery_labels)
    return gallery[ranked_ids] == np.asarray(query_labels)[:, None]


def evaluate_rankings(
    ranked_ids: np.ndarray,
    query_labels: Sequence[int] | np.ndarray,
    gallery_labels: Sequence[int] | np.ndarray,
    class_names: Sequence[str],
    ks: Sequence[int] = DEFAULT_KS,
    pr_points: int = 21,
    queries_in_gallery: bool = False,
) -> RetrievalMetrics:
    """Metrics from full rankings: ranked_ids is Q x R gallery indices, best first.

    With `queries_in_gallery` (all-vs-all), each query was removed from its own ranking, so
    its class has one relevant item fewer in the gallery.
    """
    rel = relevance_matrix(ranked_ids, query_labels, gallery_labels)
    gallery = np.asarray(gallery_labels)
    counts = {int(c): int((gallery == c).sum()) for c in np.unique(gallery)}
    totals = np.array([counts.get(int(q), 0) for q in query_labels]) - int(queries_in_gallery)
    aps = np.array([average_precision(rel[i], int(totals[i])) for i in range(len(rel))])
    n_gallery = rel.shape[1]
    map_at_k = {
        k: float(
            np.mean([average_precision_at_k(rel[i], k, int(totals[i])) for i in range(len(rel))])
        )
        for k in ks
        if k <= n_gallery
    }
    p_at_k = {
        k: float(np.mean([precision_at_k(rel[i], k) for i in range(len(rel))]))
        for k in ks
        if k <= n_gallery
    }
    labels = np.asarray(query_labels)
    per_class = {class_names[int(c)]: float(aps[labels == c].mean()) for c in np.unique(labels)}
    # Mean interpolated PR curve over all queries (as mAP), at fixed recall levels.
    levels = np.linspace(0.0, 1.0, pr_points)
    curves = []
    for i in range(len(rel)):
        if totals[i] <= 0:
            curves.append(np.zeros_like(levels))  # the convention: precision 0 throughout
            continue
        hits = np.cumsum(rel[i])
        recall = hits / totals[i]
        precision = hits / np.arange(1, n_gallery + 1)
        # Interpolated precision: best precision at any recall >= level.
        best_from_here = np.maximum.accumulate(precision[::-1])[::-1]
        idx = np.searchsorted(recall, levels, side="left")
        curves.append(np.where(idx < n_gallery, best_from_here[np.minimum(idx, n_gallery - 1)], 0))
    mean_curve = np.mean(curves, axis=0) if curves else np.zeros_like(levels)
    return RetrievalMetrics(
        map=float(aps.mean()) if len(aps) else 0.0,
        map_at_k=map_at_k,
        precision_at_k=p_at_k,
        per_class_ap=per_class,
        per_query_ap=[float(a) for a in aps],
        pr_recall=[float(x) for x in levels],
        pr_precision=[float(x) for x in mean_curve],
        n_queries=len(rel),
        n_gallery=n_gallery,
        n_without_relevant=int((totals <= 0).sum()),
    )
