"""A FAISS index on disk as immutable segments, bound to one model, in agreement with the DB.

Protocol (see docs/architecture.md): the DB is the commit log and every change is one
committed version N.
- add: the rows are inserted tagged `index_version = N`; a NEW segment file holding only
  their vectors is written (temp, fsync, rename); then ONE transaction records the segment
  (live from N) and commits version N. Old segments are never rewritten.
- remove: ONE transaction deletes the rows, records tombstones (segment, id) and commits N;
  searches skip tombstoned ids through an id selector.
- compact: a merged segment (without tombstoned vectors) is written, then ONE transaction
  records it, marks the merged segments dropped at N, deletes their tombstones and commits N.
At open for writing, rows, segments and tombstones newer than the last committed version and
every file that no live segment names are discarded, so a crash at any point leaves index and
DB agreeing and the next run redoes only the lost work. Readers load only segments they do not
hold yet (`reload_if_changed`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import faiss
import numpy as np
from sqlalchemy import Engine, delete, func, select, update
from sqlalchemy.orm import Session

from indexer.compaction import MergePolicy, SegmentStat, plan_full, plan_merge
from indexer.db import (
    ImageRow,
    IndexSegmentRow,
    IndexVersionRow,
    TombstoneRow,
    make_sessionmaker,
)
from indexer.factory import AUTO, auto_factory, lossy, min_training_vectors
from indexer.segments import (
    LoadedSegment,
    VectorRows,
    index_files,
    index_ids,
    merge_segments,
    merge_topk,
    read_index_file,
    read_vectors_file,
    segment_filename,
    set_search_defaults,
    vectors_filename,
    write_index_file,
    write_vectors_file,
)
from indexer.writer_lock import WriterLock, acquire_if

log = logging.getLogger(__name__)

DEFAULT_FACTORY = "Flat"
SQL_CHUNK = 10_000  # ids per IN (...) clause: below SQLite's and PostgreSQL's parameter limits


class ModelMismatchError(RuntimeError):
    """The index was made by another model than the one asked to use it."""


class IndexTrainingError(RuntimeError):
    """The FAISS factory needs more training vectors than the source provides."""


def new_faiss_index(dim: int, factory: str) -> faiss.Index:
    """An empty inner-product index under explicit ids (IDMap2 over the factory string)."""
    try:
        inner = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ValueError(f"invalid FAISS factory string {factory!r}: {exc}") from None
    return faiss.IndexIDMap2(inner)


def _chunks(values: Sequence[int]) -> list[list[int]]:
    return [list(values[i : i + SQL_CHUNK]) for i in range(0, len(values), SQL_CHUNK)]


@dataclass(frozen=True)
class _State:
    """The segments and tombstones of one committed version, as the DB records them."""

    version: int
    fingerprint: str
    factory: str
    segments: dict[int, IndexSegmentRow]
    dead: dict[int, np.ndarray]  # segment id -> removed ids inside it


def _committed_version(session: Session) -> IndexVersionRow | None:
    return session.scalar(
        select(IndexVersionRow)
        .where(IndexVersionRow.committed.is_(True))
        .order_by(IndexVersionRow.version.desc())
        .limit(1)
    )


def _live_at(version: int) -> object:
    return (IndexSegmentRow.created_version <= version) & (
        IndexSegmentRow.dropped_version.is_(None) | (IndexSegmentRow.dropped_version > version)
    )


def _read_state(session: Session, current: IndexVersionRow) -> _State:
    segments = {
        row.id: row
        for row in session.scalars(
            select(IndexSegmentRow)
            .where(_live_at(current.version))  # type: ignore[arg-type]
            .order_by(IndexSegmentRow.first_version)
        )
    }
    dead: dict[int, list[int]] = {}
    if segments:
        for seg_id, image_id in session.execute(
            select(TombstoneRow.segment_id, TombstoneRow.image_id).where(
                TombstoneRow.version <= current.version,
                TombstoneRow.segment_id.in_(list(segments)),
            )
        ):
            dead.setdefault(seg_id, []).append(image_id)
    return _State(
        current.version,
        current.model_fingerprint,
        current.factory,
        segments,
        {k: np.asarray(v, np.int64) for k, v in dead.items()},
    )


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
        self.policy = MergePolicy()
        self.auto_compact = True
        self.mmap = False
        self.bytes_written = 0  # segment bytes this process wrote (indexing-cost benchmark)
        self.bytes_merged = 0  # of which by compaction
        self._segment_rows: dict[int, IndexSegmentRow] = {}
        self._dead: dict[int, np.ndarray] = {}
        self._loaded: dict[int, LoadedSegment] = {}
        self._template: faiss.Index | None = None
        self._writable = False
        self._synced = False
        self._lock = threading.RLock()
        self._writer_lock: WriterLock | None = None

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
        mmap: bool = False,
    ) -> IndexStore:
        """Open (reconciling after any crash) or create the index of `index_dir`.

        With `fingerprint`, an index made by another model is refused. A new index needs
        `fingerprint` and `dim`; `factory` defaults to exact search. A reader loads every
        segment now; a writer loads segments only when it searches or compacts.
        """
        index_dir = Path(index_dir)
        index_dir.mkdir(parents=True, exist_ok=True)
        lock = acquire_if(writable, index_dir)
        try:
            with make_sessionmaker(engine)() as session:
                current = _committed_version(session)
            if current is not None:
                if fingerprint is not None and current.model_fingerprint != fingerprint:
                    raise ModelMismatchError(
                        f"index in {index_dir} was made by model {current.model_fingerprint}; "
                        f"this checkpoint is model {fingerprint}. Re-index with this model or "
                        "use the checkpoint that made the index."
                    )
                if factory not in (None, AUTO, current.factory):
                    log.warning(
                        "index in %s is %s; ignoring requested factory %s",
                        index_dir,
                        current.factory,
                        factory,
                    )
                store = cls(index_dir, engine, current.model_fingerprint, dim or 0, current.factory)
            else:
                if fingerprint is None or dim is None:
                    raise FileNotFoundError(f"no index in {index_dir}: run `rsir index` first")
                store = cls(index_dir, engine, fingerprint, dim, factory or DEFAULT_FACTORY)
            store._writer_lock = lock
            store._writable = writable
            store.mmap = mmap
            if writable:
                store._reconcile()
            store._refresh(load=not writable)
            if store._segment_rows and not store._loaded:
                store._empty_segment()  # reads the smallest segment: dimension, trained template
            return store
        except BaseException:
            if lock is not None:
                lock.release()
            raise

    def _reconcile(self) -> None:
        """Drop what a crashed run left beyond the last committed version: rows, records, files."""
        with self.sessions.begin() as session:
            current = _committed_version(session)
            version = current.version if current is not None else 0
            dropped = session.execute(
                delete(ImageRow).where(ImageRow.index_version > version)
            ).rowcount
            session.execute(
                delete(IndexVersionRow).where(
                    (IndexVersionRow.version > version) | (IndexVersionRow.committed.is_(False))
                )
            )
            session.execute(
                delete(IndexSegmentRow).where(IndexSegmentRow.created_version > version)
            )
            session.execute(
                update(IndexSegmentRow)
                .where(IndexSegmentRow.dropped_version > version)
                .values(dropped_version=None)
            )
            session.execute(delete(TombstoneRow).where(TombstoneRow.version > version))
        if dropped:
            log.warning("discarded %d rows of an interrupted run; they will be redone", dropped)

    def _remove_stale_files(self) -> None:
        """Delete every index file that no live segment names (merged, orphaned, temporary)."""
        keep = {row.filename for row in self._segment_rows.values()}
        keep |= {vectors_filename(name) for name in keep}
        for path in index_files(self.index_dir):
            if path.name not in keep:
                path.unlink(missing_ok=True)

    def close(self) -> None:
        """Release the writer lock."""
        if self._writer_lock is not None:
            self._writer_lock.release()

    def __enter__(self) -> IndexStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ---------------------------------------------------------------- state
    def _read_consistent_state(self) -> _State | None:
        """The state of the newest committed version, read again if a commit raced the read."""
        for _ in range(20):
            with self.sessions() as session:
                current = _committed_version(session)
                if current is None:
                    return None
                state = _read_state(session, current)
                again = session.scalar(
                    select(func.max(IndexVersionRow.version)).where(
                        IndexVersionRow.committed.is_(True)
                    )
                )
            if again == state.version:
                return state
        raise RuntimeError("the index kept changing while it was being read")

    def _refresh(self, load: bool) -> bool:
        """Adopt the newest committed state; loads only segments not held yet."""
        for attempt in range(5):
            state = self._read_consistent_state()
            if state is None or (state.version == self.version and self._synced):
                if self._writable and attempt == 0:
                    self._remove_stale_files()
                return False
            try:
                loaded = self._load_new(state) if load else {}
            except FileNotFoundError:  # a compaction removed a file between read and load
                continue
            with self._lock:
                keep = {sid: seg for sid, seg in self._loaded.items() if sid in state.segments}
                keep.update(loaded)
                for sid, seg in keep.items():
                    dead = state.dead.get(sid, np.zeros(0, np.int64))
                    if not np.array_equal(seg.dead, np.unique(dead)):
                        seg.set_dead(dead)
                self._loaded = keep
                self._segment_rows = state.segments
                self._dead = state.dead
                self.version = state.version
                self._synced = True
            if self._writable:
                self._remove_stale_files()
            return True
        raise RuntimeError(f"cannot load the segments of {self.index_dir}")

    def _load_new(self, state: _State) -> dict[int, LoadedSegment]:
        out: dict[int, LoadedSegment] = {}
        for sid, row in state.segments.items():
            if sid not in self._loaded:
                out[sid] = self._load_segment(row, state.dead.get(sid))
        return out

    def _load_segment(self, row: IndexSegmentRow, dead: np.ndarray | None) -> LoadedSegment:
        index = read_index_file(self.index_dir / row.filename, mmap=self.mmap)
        set_search_defaults(index)
        if self.dim == 0:
            self.dim = int(index.d)
        vectors_path = self.index_dir / vectors_filename(row.filename)
        vectors = VectorRows(vectors_path) if vectors_path.exists() else None
        seg = LoadedSegment.of(row.id, row.first_version, row.last_version, index, vectors)
        if dead is not None:
            seg.set_dead(dead)
        return seg

    def _ensure_loaded(self) -> list[LoadedSegment]:
        """Every live segment in memory (a writer loads them on its first search)."""
        with self._lock:
            missing = [row for sid, row in self._segment_rows.items() if sid not in self._loaded]
            for row in missing:
                self._loaded[row.id] = self._load_segment(row, self._dead.get(row.id))
            return [self._loaded[sid] for sid in self._segment_rows]

    # ---------------------------------------------------------------- reading
    @property
    def ntotal(self) -> int:
        """Live vectors: stored in segments and not removed."""
        rows, dead = self._segment_rows, self._dead
        return int(sum(r.ntotal for r in rows.values()) - sum(len(d) for d in dead.values()))

    @property
    def segment_count(self) -> int:
        return len(self._segment_rows)

    @staticmethod
    def filename(segment_id: int) -> str:
        return segment_filename(segment_id)

    def ids(self) -> np.ndarray:
        """Every live id, sorted (with repeats if, wrongly, two segments held one id)."""
        segments = self._ensure_loaded()
        parts = [seg.ids[~np.isin(seg.ids, seg.dead)] for seg in segments]
        return np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)

    def reconstruct(self, image_id: int) -> np.ndarray | None:
        """The stored vector of a live id, or None (unknown, removed, or not reconstructible)."""
        for seg in self._ensure_loaded():
            if seg.holds(image_id):
                exact = seg.exact_vector(image_id)
                if exact is not None:
                    return exact
                try:
                    return np.asarray(seg.index.reconstruct(int(image_id)), dtype=np.float32)
                except RuntimeError:
                    return None
        return None

    def search(
        self, vectors: np.ndarray, k: int, selector: faiss.IDSelector | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) per query row over every segment; -1 ids pad a short result.

        `selector` (optional) restricts the ids considered, on top of the removed ones.
        """
        segments = self._ensure_loaded()
        queries = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        live = sum(seg.live for seg in segments)
        if live == 0:
            empty = np.zeros((len(queries), 0))
            return empty.astype(np.float32), empty.astype(np.int64)
        k = min(k, live)
        parts = [seg.search(queries, k, selector) for seg in segments if seg.live > 0]
        return merge_topk(parts, len(queries), k)

    def reload_if_changed(self) -> bool:
        """Adopt a newer committed version written by another process; True if it did.

        Only segments this process does not hold yet are read from disk.
        """
        return self._refresh(load=True)

    # ---------------------------------------------------------------- writing
    def _empty_segment(self) -> faiss.Index:
        """A new, empty segment index (a copy of the template the first segment was made from)."""
        if self._template is not None:
            return faiss.clone_index(self._template)
        if not self._segment_rows:
            fresh = new_faiss_index(self.dim, self.factory)
            if not fresh.is_trained:
                raise IndexTrainingError(f"FAISS index {self.factory!r} must be trained first")
            return fresh
        smallest = min(self._segment_rows.values(), key=lambda r: r.ntotal)
        template = read_index_file(self.index_dir / smallest.filename)
        template.reset()  # keeps the trained quantizer, drops vectors and ids
        self.dim = int(template.d)
        self._template = template
        return faiss.clone_index(template)

    def choose_factory(self, expected: int) -> str:
        """Resolve `auto` for a new index from the archive's expected size (indexer/factory.py)."""
        if self.factory == AUTO:
            self.factory = auto_factory(self.ntotal + expected, self.dim)
            log.info("index for about %d vectors: %s", self.ntotal + expected, self.factory)
        return self.factory

    def min_training_vectors(self) -> int:
        """How many vectors `train` needs (0 when trained or the factory needs no training)."""
        if not self.needs_training():
            return 0
        return min_training_vectors(new_faiss_index(self.dim, self.factory))

    def needs_training(self) -> bool:
        if self._template is not None or self._segment_rows:
            return False
        return not new_faiss_index(self.dim, self.factory).is_trained

    def train(self, vectors: np.ndarray) -> None:
        """Train an approximate index (IVF, PQ) on a sample of descriptors."""
        sample = np.ascontiguousarray(vectors, dtype=np.float32)
        index = new_faiss_index(self.dim, self.factory)
        try:
            index.train(sample)
        except RuntimeError as exc:
            raise IndexTrainingError(
                f"FAISS index {self.factory!r} could not be trained on {len(sample)} vectors "
                f"({exc}). Index more images at once or choose a smaller factory "
                "(Flat or HNSW32 need no training)."
            ) from None
        self._template = index

    def _next_segment_id(self, session: Session) -> int:
        return int(session.scalar(select(func.max(IndexSegmentRow.id))) or 0) + 1

    def add(self, rows: Sequence[ImageRow], vectors: np.ndarray) -> list[int]:
        """Insert rows and their vectors as one new segment and committed version; their ids."""
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
                segment_id = self._next_segment_id(session)
            try:
                # 2. only the new vectors, in a new segment file
                index = self._empty_segment()
                index.add_with_ids(
                    np.ascontiguousarray(vectors, dtype=np.float32),
                    np.asarray(ids, dtype=np.int64),
                )
                seg_row = IndexSegmentRow(
                    id=segment_id,
                    filename=segment_filename(segment_id),
                    first_version=next_version,
                    last_version=next_version,
                    ntotal=len(ids),
                    created_version=next_version,
                )
                if lossy(self.factory):  # exact vectors beside the codes, for re-ranking
                    self.bytes_written += write_vectors_file(
                        [np.asarray(vectors, dtype=np.float32)],
                        self.index_dir / vectors_filename(seg_row.filename),
                    )
                self.bytes_written += write_index_file(index, self.index_dir / seg_row.filename)
                # 3. the commit point: the segment and the version in one transaction
                with self.sessions.begin() as session:
                    session.add(seg_row)
                    self._insert_version(session, next_version, self.ntotal + len(ids), seg_row)
            except BaseException:
                self._rollback()
                raise
            self.version = next_version
            self._segment_rows = {**self._segment_rows, segment_id: seg_row}
            if self._loaded or not self._writable:
                set_search_defaults(index)
                self._loaded = {
                    **self._loaded,
                    segment_id: self._load_segment(seg_row, None)
                    if lossy(self.factory)
                    else LoadedSegment.of(segment_id, next_version, next_version, index),
                }
            if self.auto_compact:
                self.compact()
            return ids

    def _rollback(self) -> None:
        """After a failed write: back to the last committed rows, records and files."""
        self._reconcile()
        self._remove_stale_files()

    def remove(self, ids: Sequence[int]) -> int:
        """Delete ids from the DB and tombstone them in their segments (one version); the count."""
        wanted = sorted({int(i) for i in ids})
        if not wanted:
            return 0
        with self._lock:
            next_version = self.version + 1
            spans = sorted(
                (row.first_version, row.last_version, sid)
                for sid, row in self._segment_rows.items()
            )
            firsts = np.asarray([s[0] for s in spans], np.int64)
            new_dead: dict[int, list[int]] = {}
            with self.sessions.begin() as session:
                for chunk in _chunks(wanted):
                    found = session.execute(
                        select(ImageRow.id, ImageRow.index_version).where(
                            ImageRow.id.in_(chunk), ImageRow.index_version <= self.version
                        )
                    ).all()
                    for image_id, version in found:
                        pos = int(np.searchsorted(firsts, version, side="right")) - 1
                        if pos < 0 or spans[pos][1] < version:
                            raise RuntimeError(f"image {image_id} is in no segment of the index")
                        new_dead.setdefault(spans[pos][2], []).append(int(image_id))
                    session.execute(delete(ImageRow).where(ImageRow.id.in_(chunk)))
                session.add_all(
                    TombstoneRow(segment_id=sid, image_id=i, version=next_version)
                    for sid, members in new_dead.items()
                    for i in members
                )
                removed = sum(len(v) for v in new_dead.values())
                if not removed:  # none of the ids is indexed: no version, nothing to reload
                    return 0
                self._insert_version(session, next_version, self.ntotal - removed, None)
            dead = dict(self._dead)
            for sid, members in new_dead.items():
                merged = np.union1d(dead.get(sid, np.zeros(0, np.int64)), members)
                dead[sid] = merged
                if sid in self._loaded:
                    self._loaded[sid].set_dead(merged)
            self._dead = dead
            self.version = next_version
            if self.auto_compact:
                self.compact()
            return removed

    # ---------------------------------------------------------------- compaction
    def _stats(self) -> list[SegmentStat]:
        return [
            SegmentStat(sid, row.first_version, row.ntotal, len(self._dead.get(sid, ())))
            for sid, row in self._segment_rows.items()
        ]

    def compact(self, full: bool = False) -> int:
        """Merge segments by the policy (or all that fit, with `full`); each merge is a commit.

        A crash loses at most the merge in progress; the next call redoes it. Returns merges.
        """
        merges = 0
        with self._lock:
            while True:
                plan = (plan_full if full else plan_merge)(self._stats(), self.policy)
                if plan is None:
                    return merges
                self._merge(plan)
                merges += 1

    def _merge(self, segment_ids: list[int]) -> None:
        rows = sorted((self._segment_rows[s] for s in segment_ids), key=lambda r: r.first_version)
        next_version = self.version + 1
        with self.sessions() as session:
            new_id = self._next_segment_id(session)
        template = self._empty_segment()
        parts = [
            (
                read_index_file(self.index_dir / row.filename),  # fresh: the merge consumes it
                self._dead.get(row.id, np.zeros(0, np.int64)),
            )
            for row in rows
        ]
        kept_rows = [~np.isin(index_ids(index), dead) for index, dead in parts]
        expected_ids = np.concatenate(
            [index_ids(p[0])[k] for p, k in zip(parts, kept_rows, strict=True)]
        )
        merged = merge_segments(template, parts)
        del parts
        if not np.array_equal(index_ids(merged), expected_ids):
            raise RuntimeError("merged segment holds other ids than its parts")
        seg_row = None
        if merged.ntotal > 0:  # a segment whose vectors were all removed just goes
            seg_row = IndexSegmentRow(
                id=new_id,
                filename=segment_filename(new_id),
                first_version=rows[0].first_version,
                last_version=rows[-1].last_version,
                ntotal=int(merged.ntotal),
                created_version=next_version,
            )
        try:
            if seg_row is not None and lossy(self.factory):
                size = write_vectors_file(
                    [
                        read_vectors_file(self.index_dir / vectors_filename(row.filename))[keep]
                        for row, keep in zip(rows, kept_rows, strict=True)
                    ],
                    self.index_dir / vectors_filename(seg_row.filename),
                )
                self.bytes_written += size
                self.bytes_merged += size
            if seg_row is not None:
                size = write_index_file(merged, self.index_dir / seg_row.filename)
                self.bytes_written += size
                self.bytes_merged += size
            with self.sessions.begin() as session:
                if seg_row is not None:
                    session.add(seg_row)
                session.execute(
                    update(IndexSegmentRow)
                    .where(IndexSegmentRow.id.in_(segment_ids))
                    .values(dropped_version=next_version)
                )
                session.execute(
                    delete(TombstoneRow).where(TombstoneRow.segment_id.in_(segment_ids))
                )
                self._insert_version(session, next_version, self.ntotal, seg_row)
        except BaseException:
            self._rollback()
            raise
        with self._lock:
            segment_rows = {k: v for k, v in self._segment_rows.items() if k not in segment_ids}
            loaded = {k: v for k, v in self._loaded.items() if k not in segment_ids}
            if seg_row is not None:
                segment_rows[new_id] = seg_row
                if self._loaded or not self._writable:
                    loaded[new_id] = self._load_segment(seg_row, None)
            order = sorted(segment_rows.items(), key=lambda kv: kv[1].first_version)
            self._segment_rows = dict(order)
            self._loaded = loaded
            self._dead = {k: v for k, v in self._dead.items() if k not in segment_ids}
            self.version = next_version
        self._remove_stale_files()

    def _insert_version(
        self, session: Session, version: int, ntotal: int, segment: IndexSegmentRow | None
    ) -> None:
        session.add(
            IndexVersionRow(
                version=version,
                filename=segment.filename if segment is not None else "",
                model_fingerprint=self.fingerprint,
                factory=self.factory,
                ntotal=ntotal,
                committed=True,
            )
        )
