"""Relevance feedback: move a query descriptor toward the hits a user marked relevant.

Rocchio's formula (Rocchio, 1971, "Relevance feedback in information retrieval", in The SMART
Retrieval System, Prentice-Hall), on unit descriptors compared by inner product.
"""

from __future__ import annotations

import numpy as np


def rocchio(
    query: np.ndarray,
    relevant: np.ndarray,
    not_relevant: np.ndarray,
    a: float = 1.0,
    b: float = 0.75,
    c: float = 0.25,
) -> np.ndarray:
    """q' = normalise(a*q + b*mean(R) - c*mean(N)): a D-dim float32 unit vector.

    `relevant` and `not_relevant` are (n, D) arrays; an empty one adds nothing.
    """
    q = np.asarray(query, dtype=np.float64).reshape(-1)
    moved = a * q
    rel = np.asarray(relevant, dtype=np.float64).reshape(-1, q.size)
    non = np.asarray(not_relevant, dtype=np.float64).reshape(-1, q.size)
    if len(rel):
        moved = moved + b * rel.mean(axis=0)
    if len(non):
        moved = moved - c * non.mean(axis=0)
    norm = float(np.linalg.norm(moved))
    if norm == 0.0:
        raise ValueError("relevance feedback cancelled the query out (zero vector)")
    return (moved / norm).astype(np.float32)
