"""Segment files: immutable FAISS indexes of parts of an archive, and exact top-k over them.

A segment is an `IndexIDMap2` written once (temporary file, fsync, rename, directory fsync) and
never changed; removed ids are masked at search time with an id selector. Searching every
segment for k and keeping the best k of the union gives the same ids and scores as one index
holding all the live vectors, because each segment's top-k contains every member of the global
top-k that it holds.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

SEGMENT_PREFIX = "segment-"
LEGACY_PREFIX = "index-v"


def segment_filename(segment_id: int) -> str:
    """The file name of segment `segment_id` inside the index directory."""
    return f"{SEGMENT_PREFIX}{segment_id:08d}.faiss"


def vectors_filename(segment_file: str) -> str:
    """The float32 vectors kept beside a segment of compressed codes, for exact re-ranking."""
    return segment_file.removesuffix(".faiss") + ".vectors.npy"


def index_files(index_dir: Path) -> list[Path]:
    """Every segment (and vectors) file, legacy whole-index file or leftover temporary file."""
    found = [*index_dir.glob(f"{SEGMENT_PREFIX}*"), *index_dir.glob(f"{LEGACY_PREFIX}*")]
    return sorted(found)


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_index_file(index: faiss.Index, final: Path) -> int:
    """Write `index` to `final` atomically and durably; returns the bytes written."""
    tmp = final.with_name(final.name + ".tmp")
    faiss.write_index(index, str(tmp))
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    size = tmp.stat().st_size
    os.replace(tmp, final)
    fsync_dir(final.parent)
    return size


def write_vectors_file(parts: list[np.ndarray], final: Path) -> int:
    """Write the rows of `parts`, concatenated, as one .npy file, atomically and durably."""
    tmp = final.with_name(final.name + ".tmp")
    rows = sum(len(p) for p in parts)
    dim = parts[0].shape[1] if parts else 0
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(rows, dim))
    start = 0
    for part in parts:
        out[start : start + len(part)] = part
        start += len(part)
    out.flush()
    del out
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    size = tmp.stat().st_size
    os.replace(tmp, final)
    fsync_dir(final.parent)
    return size


def read_vectors_file(path: Path) -> np.ndarray:
    """A segment's float32 vectors, memory-mapped: for reading them whole (compaction)."""
    return np.load(path, mmap_mode="r")


class VectorRows:
    """Rows of a segment's .npy vectors file, read on demand with `pread`.

    Why not a memory map: re-ranking reads a few scattered rows per query, and a memory map
    faults in pages around every touched row (the kernel's fault-around maps 64 KiB, and
    MADV_RANDOM does not turn it off), so after a batch of queries the searching process held
    half of a 10 GB vectors file as resident pages. Read with `pread`, the rows live in the
    kernel's page cache (shared, reclaimable) and the process holds only what it copied.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = open(path, "rb", buffering=0)  # noqa: SIM115 - held for the segment's life
        major, _ = np.lib.format.read_magic(self._file)
        read_header = (
            np.lib.format.read_array_header_1_0
            if major == 1
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran, dtype = read_header(self._file)
        if fortran or len(shape) != 2:
            raise ValueError(f"{path}: expected a C-ordered 2-d array, got {shape}")
        self.shape: tuple[int, int] = (int(shape[0]), int(shape[1]))
        self.dtype = np.dtype(dtype)
        self._offset = self._file.tell()
        self._row_bytes = self.shape[1] * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: np.ndarray | int) -> np.ndarray:
        """The rows at the given storage positions (in that order), as a new array."""
        wanted = np.atleast_1d(np.asarray(rows, dtype=np.int64))
        if wanted.size and (wanted.min() < 0 or wanted.max() >= self.shape[0]):
            raise IndexError(f"row out of range for {self.path} ({self.shape[0]} rows)")
        out = np.empty((len(wanted), self.shape[1]), dtype=self.dtype)
        buffer = out.data.cast("B")
        fd, size = self._file.fileno(), self._row_bytes
        for i, row in enumerate(wanted.tolist()):
            got = os.preadv(fd, [buffer[i * size : (i + 1) * size]], self._offset + row * size)
            if got != size:
                raise OSError(f"{self.path}: short read at row {row}")
        return out[0] if np.ndim(rows) == 0 else out

    def close(self) -> None:
        self._file.close()

    def __del__(self) -> None:  # a segment dropped on reload closes its file
        with contextlib.suppress(AttributeError):
            self._file.close()


def read_index_file(path: Path, mmap: bool = False) -> faiss.Index:
    """Load a segment; with `mmap`, flat codes stay in the page cache instead of the heap."""
    flags = faiss.IO_FLAG_MMAP_IFC if mmap else 0
    try:
        return faiss.read_index(str(path), flags)
    except RuntimeError as exc:
        if not path.exists():
            raise FileNotFoundError(str(path)) from None
        if mmap:  # a layout the memory-mapped reader does not handle: read it whole
            return faiss.read_index(str(path))
        raise RuntimeError(f"cannot read index file {path}: {exc}") from None


def innermost(index: faiss.Index) -> faiss.Index:
    """The index under IDMap / pre-transform / refine wrappers (IVF, HNSW, Flat, ...)."""
    current = faiss.downcast_index(index)
    while True:
        if isinstance(current, faiss.IndexIDMap | faiss.IndexIDMap2 | faiss.IndexPreTransform):
            current = faiss.downcast_index(current.index)
        elif isinstance(current, faiss.IndexRefine):
            current = faiss.downcast_index(current.base_index)
        else:
            return current


def set_search_defaults(index: faiss.Index) -> None:
    """Sensible recall defaults for approximate indexes (nprobe, efSearch)."""
    inner = innermost(index)
    if isinstance(inner, faiss.IndexIVF):
        inner.nprobe = max(1, min(inner.nlist, 32))
    elif isinstance(inner, faiss.IndexHNSW):
        inner.hnsw.efSearch = 128


def search_params(index: faiss.Index, selector: faiss.IDSelector) -> faiss.SearchParameters:
    """Parameters carrying `selector` and the index's own nprobe / efSearch (they override them)."""
    inner = innermost(index)
    params: faiss.SearchParameters
    if isinstance(inner, faiss.IndexIVF):
        params = faiss.SearchParametersIVF()
        params.nprobe = inner.nprobe
    elif isinstance(inner, faiss.IndexHNSW):
        params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
        params.efSearch = inner.hnsw.efSearch  # type: ignore[attr-defined]
    else:
        params = faiss.SearchParameters()
    params.sel = selector
    return params


def index_ids(index: faiss.Index) -> np.ndarray:
    """The external ids of an `IndexIDMap2`, in storage order."""
    return faiss.vector_to_array(index.id_map).astype(np.int64)  # type: ignore[attr-defined]


def stored_vectors(index: faiss.Index) -> np.ndarray:
    """All vectors of an `IndexIDMap2` in storage order (exact for Flat/HNSW-Flat storage)."""
    n = int(index.ntotal)
    if n == 0:
        return np.zeros((0, index.d), np.float32)
    return index.index.reconstruct_n(0, n)  # type: ignore[attr-defined]


@dataclass
class LoadedSegment:
    """A segment in memory: its index, its ids and the selector that hides its removed ids."""

    id: int
    first_version: int
    last_version: int
    index: faiss.Index
    ids: np.ndarray  # sorted external ids held by the file
    dead: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # sorted tombstones
    vectors: VectorRows | None = None  # exact float32 rows in storage order, on disk
    rerank: int = 10  # with `vectors`: candidates fetched per result, then ranked exactly
    _keep: list[object] = field(default_factory=list, repr=False)
    _alive: faiss.IDSelector | None = field(default=None, repr=False)
    _rows: np.ndarray | None = field(default=None, repr=False)  # storage row of ids[i]

    @classmethod
    def of(
        cls, seg_id: int, first: int, last: int, index: faiss.Index,
        vectors: VectorRows | None = None,
    ) -> LoadedSegment:  # fmt: skip
        """A segment over a loaded index (and its exact vectors, when it keeps them)."""
        storage = index_ids(index)
        order = np.argsort(storage, kind="stable")
        seg = cls(seg_id, first, last, index, storage[order], vectors=vectors)
        seg._rows = order
        return seg

    def exact_vector(self, image_id: int) -> np.ndarray | None:
        """The float32 vector of an id from the kept vectors, if this segment keeps them."""
        if self.vectors is None or self._rows is None:
            return None
        pos = int(np.searchsorted(self.ids, image_id))
        return np.asarray(self.vectors[self._rows[pos]], dtype=np.float32)

    @property
    def live(self) -> int:
        return int(len(self.ids) - len(self.dead))

    def set_dead(self, dead: np.ndarray) -> None:
        """Replace the tombstones (and the selector built from them)."""
        self.dead = np.unique(np.asarray(dead, dtype=np.int64))
        if self.dead.size == 0:
            self._alive, self._keep = None, []
            return
        batch = faiss.IDSelectorBatch(self.dead.size, faiss.swig_ptr(self.dead))
        self._alive = faiss.IDSelectorNot(batch)
        self._keep = [batch, self.dead]

    def holds(self, image_id: int) -> bool:
        """True when the id is in this segment and not removed."""
        pos = int(np.searchsorted(self.ids, image_id))
        if pos >= len(self.ids) or self.ids[pos] != image_id:
            return False
        pos = int(np.searchsorted(self.dead, image_id))
        return not (pos < len(self.dead) and self.dead[pos] == image_id)

    def search(
        self, queries: np.ndarray, k: int, selector: faiss.IDSelector | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of this segment under its tombstones and an optional caller's selector."""
        sel: faiss.IDSelector | None = self._alive
        keep: list[object] = []
        if selector is not None:
            sel = selector if sel is None else faiss.IDSelectorAnd(selector, sel)
            keep.append(sel)
        fetch = min(k * self.rerank if self.vectors is not None else k, int(self.index.ntotal))
        if sel is None:
            scores, ids = self.index.search(queries, fetch)
        else:
            scores, ids = self.index.search(queries, fetch, params=search_params(self.index, sel))
        if self.vectors is None:
            return scores, ids
        return self._exact_top(queries, ids, k)

    def _exact_top(
        self, queries: np.ndarray, ids: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Re-rank candidate ids by their exact inner products with the queries; best k."""
        assert self.vectors is not None and self._rows is not None
        valid = ids >= 0
        pos = np.searchsorted(self.ids, np.where(valid, ids, self.ids[0]))
        rows = self._rows[np.minimum(pos, len(self._rows) - 1)]
        unique_rows, inverse = np.unique(rows, return_inverse=True)
        exact = np.asarray(self.vectors[unique_rows], dtype=np.float32)  # only these rows
        scores = np.einsum("qcd,qd->qc", exact[inverse.reshape(rows.shape)], queries)
        scores = np.where(valid, scores, -np.inf).astype(np.float32)
        k = min(k, scores.shape[1])
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)


def merge_topk(
    parts: list[tuple[np.ndarray, np.ndarray]], n_queries: int, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The best k (score, id) per query of the segments' results, best first; -1 pads."""
    if not parts:
        return np.zeros((n_queries, 0), np.float32), np.zeros((n_queries, 0), np.int64)
    scores = np.hstack([p[0] for p in parts]).astype(np.float32, copy=False)
    ids = np.hstack([p[1] for p in parts]).astype(np.int64, copy=False)
    scores = np.where(ids < 0, -np.inf, scores)
    k = min(k, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top_scores = np.take_along_axis(scores, order, axis=1)
    top_ids = np.take_along_axis(ids, order, axis=1)
    top_scores[top_ids < 0] = -np.finfo(np.float32).max
    return top_scores, top_ids


def _sync_wrapper_counts(wrapper: faiss.Index, ntotal: int) -> None:
    """After a merge into a nested IVF: the wrappers above it (pre-transforms) count it too."""
    current: faiss.Index | None = faiss.downcast_index(wrapper)
    while isinstance(current, faiss.IndexPreTransform):
        current.ntotal = ntotal
        current = faiss.downcast_index(current.index)


def _drop_from_ivf(ivf: faiss.IndexIVF, dead_positions: np.ndarray, kept: np.ndarray) -> None:
    """Remove internal ids from an IVF and renumber the rest 0..n-1 (as IDMap2 expects)."""
    ivf.remove_ids(faiss.IDSelectorBatch(dead_positions.size, faiss.swig_ptr(dead_positions)))
    new_position = np.cumsum(kept, dtype=np.int64) - 1
    invlists = ivf.invlists
    assert invlists is not None
    for list_no in range(ivf.nlist):
        size = invlists.list_size(list_no)
        if size:
            ids = faiss.rev_swig_ptr(invlists.get_ids(list_no), size)
            ids[:] = new_position[ids]


def merge_segments(
    template: faiss.Index, parts: list[tuple[faiss.Index, np.ndarray]]
) -> faiss.Index:
    """One `IndexIDMap2` holding the vectors of `parts` (segment, removed ids) minus the removed.

    `template` is an empty (trained) segment index; the parts are consumed. IVF lists are moved
    with their internal ids shifted and removed entries renumbered away (FAISS's IDMap merge and
    removal assume internal ids are positions, which IVF does not keep); indexes that cannot
    merge (HNSW) get their stored vectors added again.
    """
    merged = faiss.clone_index(template)
    inner = faiss.downcast_index(merged.index)  # type: ignore[attr-defined]
    ivf = faiss.try_extract_index_ivf(inner)
    all_ids: list[np.ndarray] = []
    dead_masks: list[np.ndarray] = []
    for index, dead in parts:
        ids = index_ids(index)
        part_inner = faiss.downcast_index(index.index)  # type: ignore[attr-defined]
        if ivf is not None:
            ivf.merge_from(faiss.extract_index_ivf(part_inner), ivf.ntotal)
            all_ids.append(ids)
            dead_masks.append(np.isin(ids, dead))
            continue
        if dead.size:
            with contextlib.suppress(RuntimeError):  # HNSW cannot: filtered when re-added
                index.remove_ids(faiss.IDSelectorBatch(dead.size, faiss.swig_ptr(dead)))
            ids = index_ids(index)
        try:
            inner.merge_from(part_inner)
            all_ids.append(ids)
        except RuntimeError:
            keep = ~np.isin(ids, dead)
            inner.add(np.ascontiguousarray(stored_vectors(index)[keep]))
            all_ids.append(ids[keep])
    ids = np.concatenate(all_ids) if all_ids else np.zeros(0, np.int64)
    if ivf is not None and dead_masks:
        dead_mask = np.concatenate(dead_masks)
        if dead_mask.any():
            _drop_from_ivf(ivf, np.flatnonzero(dead_mask).astype(np.int64), ~dead_mask)
            ids = ids[~dead_mask]
        _sync_wrapper_counts(inner, ivf.ntotal)
    faiss.copy_array_to_vector(ids, merged.id_map)  # type: ignore[attr-defined]
    merged.ntotal = int(inner.ntotal)
    merged.construct_rev_map()  # type: ignore[attr-defined]
    return merged
