"""Search-time refinements on unit descriptors: query expansion, database-side augmentation,
relevance feedback. Pure functions over numpy arrays; similarity is the inner product.

- alpha-QE (Radenovic, Tolias and Chum, TPAMI 2019, doi:10.1109/TPAMI.2018.2846566): the query
  is replaced by the normalised sum of itself and its top-n neighbours, each weighted by its
  similarity to the query raised to alpha; then searched again.
- DBA (Arandjelovic and Zisserman, CVPR 2012, doi:10.1109/CVPR.2012.6248018; alpha-weighted as
  in Radenovic et al.): every database vector is replaced, once, by the same weighted sum over
  its own top-n neighbours (itself first).
- Relevance feedback (Rocchio, 1971): the query moves toward the hits marked relevant and away
  from those marked not relevant: q' = normalise(a q + b mean(R) - c mean(N)).
"""

from __future__ import annotations

import numpy as np


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def weighted_neighbour_mean(
    vectors: np.ndarray, neighbours: np.ndarray, similarities: np.ndarray, alpha: float
) -> np.ndarray:
    """normalise(sum_j max(s_j, 0)^alpha * vectors[neighbours_j]) for each row (N x n -> N x D).

    The first neighbour of each row is expected to be the row's own vector (similarity 1)."""
    weights = np.power(np.clip(similarities, 0.0, None), alpha)[..., None]  # N x n x 1
    return _normalise((vectors[neighbours] * weights).sum(axis=1))


def alpha_query_expansion(
    queries: np.ndarray, database: np.ndarray, n: int, alpha: float = 3.0
) -> np.ndarray:
    """Expanded queries: each query plus its top-n database neighbours, alpha-weighted."""
    if n <= 0:
        return _normalise(np.asarray(queries, dtype=np.float32))
    sims = queries @ database.T
    top = np.argsort(-sims, axis=1)[:, :n]
    top_sims = np.take_along_axis(sims, top, axis=1)
    stacked = np.concatenate([database[top], queries[:, None, :]], axis=1)  # query weight 1
    weights = np.concatenate(
        [np.power(np.clip(top_sims, 0.0, None), alpha), np.ones((len(queries), 1))], axis=1
    )
    return _normalise((stacked * weights[..., None]).sum(axis=1))


def database_augmentation(database: np.ndarray, n: int, alpha: float = 3.0) -> np.ndarray:
    """Each database vector replaced by its alpha-weighted top-n neighbourhood (itself first)."""
    if n <= 1:
        return _normalise(np.asarray(database, dtype=np.float32))
    sims = database @ database.T
    top = np.argsort(-sims, axis=1)[:, :n]
    return weighted_neighbour_mean(database, top, np.take_along_axis(sims, top, axis=1), alpha)


def rocchio(
    query: np.ndarray,
    relevant: np.ndarray,
    not_relevant: np.ndarray,
    a: float = 1.0,
    b: float = 0.75,
    c: float = 0.25,
) -> np.ndarray:
    """The query moved toward the marked-relevant vectors and away from the others (unit norm).

    query: D; relevant, not_relevant: k x D (either may be empty)."""
    moved = a * np.asarray(query, dtype=np.float64)
    if len(relevant):
        moved = moved + b * np.asarray(relevant, dtype=np.float64).mean(axis=0)
    if len(not_relevant):
        moved = moved - c * np.asarray(not_relevant, dtype=np.float64).mean(axis=0)
    return _normalise(moved)
