"""Which FAISS factory suits an archive (`--index auto`), and what an approximate one needs.

The rule, by the bytes the searching process must hold (d = descriptor dimension, n = vectors):
- n x d x 4 bytes <= 2 GiB (200k x 2048-d descriptors): `Flat`, exact search; brute force over
  that many vectors stays in the tens of milliseconds on a few cores.
- n x d bytes <= 4 GiB (2M x 2048-d): `IVF<nlist>,SQ8`, one byte per dimension, a quarter of
  Flat, scores within about 1 % of exact; the candidates are re-ranked exactly.
- beyond: `IVF<nlist>,PQ<m>np` with m <= 64 sub-quantizers (64 bytes per vector: 10M x 2048-d in
  640 MB), whose coarse ranking loses recall; the top candidates of every query are re-ranked
  with the exact inner products of the float32 vectors kept on disk beside each segment and
  memory-mapped, which restores the recall that the codes lose.
`np`: no polysemous training, which plain `PQ<m>` adds, which inner-product search never uses
and which took 277 s on 16k x 256-d vectors here (`bench/search_scale.py`).
nlist is the power of two nearest 4 sqrt(n), between 256 and 8192; the quantizer is trained
on a random sample of at least 30 x nlist vectors (FAISS's own lower bound for k-means).
"""

from __future__ import annotations

import math
import re

import faiss

from indexer.segments import innermost

AUTO = "auto"
FLAT_BYTES = 2 * 2**30
SQ8_BYTES = 4 * 2**30
TRAINING_PER_CENTROID = 30
LOSSY_CODES = re.compile(r"PQ|SQ|PCA|OPQ|LSH|RQ|LSQ|ITQ", re.IGNORECASE)


def nlist_for(n: int) -> int:
    """IVF list count: the power of two nearest 4 sqrt(n), clamped to 256..8192."""
    target = 4 * math.sqrt(max(n, 1))
    return int(min(8192, max(256, 2 ** round(math.log2(target)))))


def pq_m(dim: int) -> int:
    """The most PQ sub-quantizers (<= 64) that divide `dim`."""
    return max(m for m in range(1, 65) if dim % m == 0)


def auto_factory(n: int, dim: int) -> str:
    """The factory for an archive of `n` vectors of dimension `dim` (see the module doc)."""
    if n * dim * 4 <= FLAT_BYTES:
        return "Flat"
    if n * dim <= SQ8_BYTES:
        return f"IVF{nlist_for(n)},SQ8"
    return f"IVF{nlist_for(n)},PQ{pq_m(dim)}np"


def lossy(factory: str) -> bool:
    """True when the index's scores are not exact inner products (compressed codes)."""
    return bool(LOSSY_CODES.search(factory))


def min_training_vectors(index: faiss.Index) -> int:
    """Vectors a training sample needs: 30 per IVF list, else 39 per PQ/SQ centroid."""
    if index.is_trained:
        return 0
    inner = innermost(index)
    if isinstance(inner, faiss.IndexIVF):
        return TRAINING_PER_CENTROID * int(inner.nlist)
    return 39 * 256
