"""A FAISS index on disk, bound to one model, kept in agreement with the metadata DB.

Protocol (see docs/architecture.md): every change writes a new index file
`index-v<N>.faiss` (temp, fsync, rename) and then, in ONE DB transaction, commits version N
together with the rows it added or removed. At open, anything newer than the last committed
version (rows or files) is discarded, so a crash at any point leaves index and DB agreeing and
the next run redoes only the lost work.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import faiss
import numpy as np
from sqlalchemy import Engine, delete, func, select

from indexer.db import ImageRow, IndexVersionRow, make_sessionmaker

log = logging.getLogger(__name__)

DEFAULT_FACTORY = "Flat"


class ModelMismatchError(RuntimeError):
    """The index was made by another model than the one asked to use it."""


class IndexTrainingError(RuntimeError):
    """The FAISS factory needs more training vectors than the source provides."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def new_faiss_index(dim: int, factory: str) -> faiss.Index:
    """An empty inner-product index under explicit ids (IDMap2 over the factory string)."""
    try:
        inner = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ValueError(f"invalid FAISS factory string {factory!r}: {exc}") from None
    return faiss.IndexIDMap2(inner)


def _set_search_defaults(index: faiss.Index) -> None:
    """Sensible recall defaults for approximate indexes (nprobe, efSearch)."""
    inner = faiss.downcast_index(index.index) if hasattr(index, "index") else index
    if isinstance(inner, faiss.IndexIVF):
        inner.nprobe = max(1, min(inner.nlist, 32))
    elif isinstance(inner, faiss.IndexHNSW):
        inner.hnsw.efSearch = 128


def _search_params(index: faiss.Index, selector: faiss.IDSelector) -> faiss.SearchParameters:
    """Search parameters carrying `selector`, of the type the inner index requires, keeping
    its nprobe / efSearch (parameters replace the index's own settings)."""
    inner = faiss.downcast_index(index.index) if hasattr(index, "index") else index
    params: Any
    if isinstance(inner, faiss.IndexIVF):
        params = faiss.SearchParametersIVF()
        params.nprobe = inner.nprobe
    elif isinstance(inner, faiss.IndexHNSW):
        params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
        params.efSearch = inner.hnsw.efSearch
    else:
        params = faiss.SearchParameters()
    params.sel = selector
    return params


class IndexStore:
    """The current index of a directory. Thread-safe; one writer process (a lock file) at a time."""

    def __init__(
        self, index_dir: Path, engine: Engine, fingerprint: str, dim: int, factory: str
    ) -> None:
        self.index_dir = Path(index_dir)
        self.engine = engine
        self.sessions = make_sessionmaker(engine)
        self.fingerprint = fingerprint
        self.dim = dim
        self.factory = factory
        self.version = 0
        self.index: faiss.Index = new_faiss_index(dim, factory)
        self._lock = threading.RLock()
        self._lock_file: int | None = None

    # ---------------------------------------------------------------- opening
    @classmethod
    def open(
        cls,
        index_dir: Path,
        engine: Engine,
        fingerprint: str | None = None,
        dim: int | None = None,
        factory: str | None = None,
        writable: bool = False,
    ) -> IndexStore:
        """Open (reconciling after any crash) or create the index of `index_dir`.

        With `fingerprint`, an index made by another model is refused. A new index needs
        `fingerprint` and `dim`; `factory` defaults to exact search.
        """
        index_dir = Path(index_dir)
        index_dir.mkdir(parents=True, exist_ok=True)
        lock_fd = None
        if writable:
            lock_fd = os.open(index_dir / ".write.lock", os.O_CREAT | os.O_RDWR)
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(lock_fd)
                raise RuntimeError(f"another process is writing to {index_dir}") from None
        try:
            with make_sessionmaker(engine)() as session:
                current = session.scalar(
                    select(IndexVersionRow)
                    .where(IndexVersionRow.committed.is_(True))
                    .order_by(IndexVersionRow.version.desc())
                    .limit(1)
                )
            if current is not None:
                if fingerprint is not None and current.model_fingerprint != fingerprint:
                    raise ModelMismatchError(
                        f"index in {index_dir} was made by model {current.model_fingerprint}; "
                        f"this checkpoint is model {fingerprint}. Re-index with this model or "
                        "use the checkpoint that made the index."
                    )
                if factory is not None and factory != current.factory:
                    log.warning(
                        "index in %s is %s; ignoring requested factory %s",
                        index_dir,
                        current.factory,
                        factory,
                    )
                store = cls(index_dir, engine, current.model_fingerprint, 0, current.factory)
                store.version = current.version
                store.index = faiss.read_index(str(index_dir / current.filename))
                store.dim = store.index.d
            else:
                if fingerprint is None or dim is None:
                    raise FileNotFoundError(f"no index in {index_dir}: run `rsir index` first")
                store = cls(index_dir, engine, fingerprint, dim, factory or DEFAULT_FACTORY)
            store._lock_file = lock_fd
            _set_search_defaults(store.index)
            if writable:
                store._reconcile()
            return store
        except BaseException:
            if lock_fd is not None:
                os.close(lock_fd)
            raise

    def _reconcile(self) -> None:
        """Drop what a crashed run left beyond the last committed version: rows and files."""
        with self.sessions.begin() as session:
            dropped = session.execute(
                delete(ImageRow).where(ImageRow.index_version > self.version)
            ).rowcount
            session.execute(
                delete(IndexVersionRow).where(
                    (IndexVersionRow.version > self.version)
                    | (IndexVersionRow.committed.is_(False))
                )
            )
        if dropped:
            log.warning("discarded %d rows of an interrupted run; they will be redone", dropped)
        self._remove_stale_files()

    def _remove_stale_files(self) -> None:
        keep = self.filename(self.version)
        for path in self.index_dir.glob("index-v*.faiss*"):
            if path.name != keep:
                path.unlink(missing_ok=True)

    def close(self) -> None:
        """Release the writer lock."""
        if self._lock_file is not None:
            os.close(self._lock_file)
            self._lock_file = None

    def __enter__(self) -> IndexStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ---------------------------------------------------------------- reading
    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @staticmethod
    def filename(version: int) -> str:
        return f"index-v{version:08d}.faiss"

    def search(
        self, vectors: np.ndarray, k: int, selector: faiss.IDSelector | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) per query row; ids of -1 pad when fewer than k exist.

        With `selector`, only ids it accepts are ranked (FAISS's filtered search).
        """
        queries = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        with self._lock:
            if self.index.ntotal == 0:
                empty = np.zeros((len(queries), 0))
                return empty.astype(np.float32), empty.astype(np.int64)
            k = min(k, self.index.ntotal)
            if selector is None:
                return self.index.search(queries, k)
            return self.index.search(queries, k, params=_search_params(self.index, selector))

    def reload_if_changed(self) -> bool:
        """Load a newer committed version written by another process; True if it did."""
        with self.sessions() as session:
            latest = session.scalar(
                select(func.max(IndexVersionRow.version)).where(IndexVersionRow.committed.is_(True))
            )
        if latest is None or latest == self.version:
            return False
        index = faiss.read_index(str(self.index_dir / self.filename(latest)))
        _set_search_defaults(index)
        with self._lock:
            self.index, self.version = index, latest
        return True

    # ---------------------------------------------------------------- writing
    def _write_version(self, index: faiss.Index, version: int) -> None:
        final = self.index_dir / self.filename(version)
        tmp = final.with_name(final.name + ".tmp")
        faiss.write_index(index, str(tmp))
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, final)
        _fsync_dir(self.index_dir)

    def needs_training(self) -> bool:
        return not self.index.is_trained

    def train(self, vectors: np.ndarray) -> None:
        """Train an approximate index (IVF, PQ) on a sample of descriptors."""
        sample = np.ascontiguousarray(vectors, dtype=np.float32)
        try:
            self.index.train(sample)
        except RuntimeError as exc:
            raise IndexTrainingError(
                f"FAISS index {self.factory!r} could not be trained on {len(sample)} vectors "
                f"({exc}). Index more images at once or choose a smaller factory "
                "(Flat or HNSW32 need no training)."
            ) from None

    def add(self, rows: Sequence[ImageRow], vectors: np.ndarray) -> list[int]:
        """Insert rows and their vectors as one new committed version; returns their ids."""
        if len(rows) != len(vectors):
            raise ValueError("one vector per row")
        if not rows:
            return []
        with self._lock:
            next_version = self.version + 1
            # 1. rows in the DB, tagged with a version that is not committed yet
            with self.sessions.begin() as session:
                for row in rows:
                    row.index_version = next_version
                    row.model_fingerprint = self.fingerprint
                session.add_all(rows)
                session.flush()
                ids = [row.id for row in rows]
            try:
                # 2. vectors in the index, new file on disk
                self.index.add_with_ids(
                    np.ascontiguousarray(vectors, dtype=np.float32),
                    np.asarray(ids, dtype=np.int64),
                )
                self._write_version(self.index, next_version)
                # 3. the commit point
                self._commit_version(next_version)
            except BaseException:
                self._rollback()
                raise
            return ids

    def _rollback(self) -> None:
        """After a failed write: back to the last committed file and rows."""
        if self.version > 0:
            self.index = faiss.read_index(str(self.index_dir / self.filename(self.version)))
            _set_search_defaults(self.index)
        else:
            trained = self.index
            trained.reset()
            self.index = trained
        self._reconcile()

    def remove(self, ids: Sequence[int]) -> int:
        """Delete ids from index and DB together (a new committed version); returns the count."""
        wanted = np.asarray(sorted(set(ids)), dtype=np.int64)
        if wanted.size == 0:
            return 0
        with self._lock:
            index = self._without(wanted)
            removed = self.index.ntotal - index.ntotal
            next_version = self.version + 1
            self._write_version(index, next_version)
            with self.sessions.begin() as session:
                session.execute(delete(ImageRow).where(ImageRow.id.in_(wanted.tolist())))
                self._insert_version(session, next_version, index.ntotal)
            self.index = index
            self.version = next_version
            self._remove_stale_files()
            return int(removed)

    def _without(self, ids: np.ndarray) -> faiss.Index:
        """A copy of the index without `ids`; rebuilt when the index type cannot remove."""
        copy = faiss.deserialize_index(faiss.serialize_index(self.index))
        try:
            copy.remove_ids(faiss.IDSelectorBatch(ids.size, faiss.swig_ptr(ids)))
            return copy
        except RuntimeError:  # e.g. HNSW: rebuild from the stored vectors
            keep_ids = faiss.vector_to_array(self.index.id_map).astype(np.int64)  # type: ignore[attr-defined]
            mask = ~np.isin(keep_ids, ids)
            rows = [self.index.reconstruct(int(i)) for i in keep_ids[mask]]
            vectors = np.vstack(rows) if rows else np.zeros((0, self.dim), np.float32)
            rebuilt = new_faiss_index(self.dim, self.factory)
            if not rebuilt.is_trained:
                rebuilt.train(vectors)
            rebuilt.add_with_ids(vectors, keep_ids[mask])
            return rebuilt

    def _insert_version(self, session: object, version: int, ntotal: int) -> None:
        session.add(  # type: ignore[attr-defined]
            IndexVersionRow(
                version=version,
                filename=self.filename(version),
                model_fingerprint=self.fingerprint,
                factory=self.factory,
                ntotal=ntotal,
                committed=True,
            )
        )

    def _commit_version(self, version: int) -> None:
        with self.sessions.begin() as session:
            self._insert_version(session, version, self.index.ntotal)
        self.version = version
        self._remove_stale_files()
