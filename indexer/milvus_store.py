"""The index in Milvus (a cluster, or Milvus Lite in a local file), with the DB as system of record.

Why: an archive that outgrows one machine's memory and disk needs a distributed vector engine;
the metadata DB stays the commit log, exactly as for FAISS segments:
- add: rows are inserted tagged `index_version = N` (uncommitted), their vectors are UPSERTED
  into Milvus keyed by image id (idempotent: a re-run writes the same entity again), then one
  transaction commits version N;
- remove: one transaction deletes the rows and commits N, then the ids are deleted from Milvus;
- at open for writing, uncommitted rows are dropped and their ids deleted from Milvus, and if
  Milvus still holds ids that the DB does not (a crash between the two), they are deleted, so a
  re-run after any crash converges to index == DB.
The collection records the model fingerprint in its properties; another model is refused.
Needs the optional extra `rsir[milvus]` (pymilvus; milvus-lite for a local file URI).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import faiss
import numpy as np
from sqlalchemy import Engine, delete, func, select

from indexer.db import ImageRow, IndexVersionRow, make_sessionmaker
from indexer.store import SQL_CHUNK, ModelMismatchError
from indexer.writer_lock import WriterLock, acquire_if

log = logging.getLogger(__name__)

FINGERPRINT_KEY = "rsir.fingerprint"
UPSERT_BATCH = 512


def _client(uri: str) -> Any:
    try:
        from pymilvus import MilvusClient
    except ImportError:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "the Milvus engine needs the optional extra: pip install 'rsir[milvus]'"
        ) from None
    if "://" not in uri:  # a Milvus Lite file
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
    return MilvusClient(uri)


def _selected(selector: faiss.IDSelector | None, ids: list[int]) -> list[bool]:
    if selector is None:
        return [True] * len(ids)
    return [bool(selector.is_member(int(i))) for i in ids]  # type: ignore[attr-defined]


class MilvusStore:
    """IndexStore's interface over a Milvus collection (one writer process at a time)."""

    def __init__(
        self, client: Any, collection: str, engine: Engine, fingerprint: str, dim: int,
        index_dir: Path, uri: str,
    ) -> None:  # fmt: skip
        self.client = client
        self.collection = collection
        self.engine = engine
        self.sessions = make_sessionmaker(engine)
        self.fingerprint = fingerprint
        self.dim = dim
        self.index_dir = Path(index_dir)
        self.uri = uri
        self.factory = f"milvus:{collection}"
        self.version = 0
        self._count = 0
        self._lock = threading.RLock()
        self._writer_lock: WriterLock | None = None

    # ---------------------------------------------------------------- opening
    @classmethod
    def open(
        cls,
        uri: str,
        index_dir: Path,
        engine: Engine,
        fingerprint: str | None = None,
        dim: int | None = None,
        collection: str = "rsir",
        writable: bool = False,
    ) -> MilvusStore:
        """Connect; create the collection for a new index; refuse another model's collection."""
        index_dir = Path(index_dir)
        index_dir.mkdir(parents=True, exist_ok=True)
        lock = acquire_if(writable, index_dir)
        try:
            client = _client(uri)
            if client.has_collection(collection):
                info = client.describe_collection(collection)
                stored = info.get("properties", {}).get(FINGERPRINT_KEY)
                if fingerprint is not None and stored != fingerprint:
                    raise ModelMismatchError(
                        f"Milvus collection {collection} at {uri} was made by model {stored}; "
                        f"this checkpoint is model {fingerprint}. Re-index with this model "
                        "(another collection) or use the checkpoint that made it."
                    )
                field = next(f for f in info["fields"] if f["name"] == "vector")
                store = cls(
                    client, collection, engine, stored, int(field["params"]["dim"]), index_dir, uri
                )
            else:
                if fingerprint is None or dim is None:
                    raise FileNotFoundError(f"no Milvus collection {collection} at {uri}")
                store = cls(client, collection, engine, fingerprint, dim, index_dir, uri)
                store._create()
            client.load_collection(collection)
            store._writer_lock = lock
            if writable:
                store._reconcile()
            store.reload_if_changed()
            return store
        except BaseException:
            if lock is not None:
                lock.release()
            raise

    def _create(self) -> None:
        from pymilvus import DataType

        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
        params = self.client.prepare_index_params()
        params.add_index("vector", index_type="AUTOINDEX", metric_type="IP")
        self.client.create_collection(self.collection, schema=schema, index_params=params)
        self.client.alter_collection_properties(
            self.collection, properties={FINGERPRINT_KEY: self.fingerprint}
        )

    def _committed(self) -> int:
        with self.sessions() as session:
            return int(
                session.scalar(
                    select(func.max(IndexVersionRow.version)).where(
                        IndexVersionRow.committed.is_(True)
                    )
                )
                or 0
            )

    def _milvus_ids(self) -> set[int]:
        iterator = self.client.query_iterator(
            self.collection, batch_size=4096, filter="", output_fields=["id"]
        )
        ids: set[int] = set()
        try:
            while batch := iterator.next():
                ids.update(int(e["id"]) for e in batch)
        finally:
            iterator.close()
        return ids

    def _reconcile(self) -> None:
        """Drop uncommitted rows (and their vectors); delete vectors the DB no longer has."""
        version = self._committed()
        with self.sessions.begin() as session:
            lost = list(
                session.scalars(select(ImageRow.id).where(ImageRow.index_version > version))
            )
            for chunk in range(0, len(lost), SQL_CHUNK):
                ids = lost[chunk : chunk + SQL_CHUNK]
                session.execute(delete(ImageRow).where(ImageRow.id.in_(ids)))
            session.execute(
                delete(IndexVersionRow).where(
                    (IndexVersionRow.version > version) | (IndexVersionRow.committed.is_(False))
                )
            )
        if lost:
            self._delete(lost)
            log.warning("discarded %d rows of an interrupted run; they will be redone", len(lost))
        with self.sessions() as session:
            in_db = set(session.scalars(select(ImageRow.id)))
        extra = sorted(self._milvus_ids() - in_db)
        if extra:
            self._delete(extra)
            log.warning("deleted %d vectors from Milvus that the DB had removed", len(extra))

    def _delete(self, ids: Sequence[int]) -> None:
        for start in range(0, len(ids), SQL_CHUNK):
            self.client.delete(
                self.collection, ids=[int(i) for i in ids[start : start + SQL_CHUNK]]
            )

    def close(self) -> None:
        """Release the writer lock (the client is closed with it)."""
        if self._writer_lock is not None:
            self._writer_lock.release()
        self.client.close()

    def __enter__(self) -> MilvusStore:
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
        return self._count

    def ids(self) -> np.ndarray:
        """Every id Milvus holds, sorted."""
        return np.asarray(sorted(self._milvus_ids()), dtype=np.int64)

    def reconstruct(self, image_id: int) -> np.ndarray | None:
        found = self.client.get(self.collection, ids=[int(image_id)], output_fields=["vector"])
        return np.asarray(found[0]["vector"], dtype=np.float32) if found else None

    def search(
        self, vectors: np.ndarray, k: int, selector: faiss.IDSelector | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) per query; a FAISS `selector` is applied to a widened result."""
        queries = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        k = min(k, self._count)
        if k == 0:
            empty = np.zeros((len(queries), 0))
            return empty.astype(np.float32), empty.astype(np.int64)
        limit = k if selector is None else min(max(k * 10, 100), 16384)
        results = self.client.search(
            self.collection,
            data=queries.tolist(),
            limit=limit,
            anns_field="vector",
            search_params={"metric_type": "IP"},
        )
        scores = np.full((len(queries), k), -np.finfo(np.float32).max, dtype=np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        for row, hits in enumerate(results):
            hit_ids = [int(h["id"]) for h in hits]
            keep = _selected(selector, hit_ids)
            chosen = [
                (h["distance"], i) for h, i, ok in zip(hits, hit_ids, keep, strict=True) if ok
            ]
            for col, (score, image_id) in enumerate(chosen[:k]):
                scores[row, col], ids[row, col] = score, image_id
        return scores, ids

    def reload_if_changed(self) -> bool:
        """Adopt the newest committed version (Milvus itself is always current)."""
        latest = self._committed()
        if latest == self.version and self.version:
            return False
        with self.sessions() as session:
            self._count = int(session.scalar(select(func.count(ImageRow.id))) or 0)
        changed = latest != self.version
        self.version = latest
        return changed

    # ---------------------------------------------------------------- writing
    def choose_factory(self, expected: int) -> str:
        return self.factory

    def needs_training(self) -> bool:
        return False

    def min_training_vectors(self) -> int:
        return 0

    def train(self, vectors: np.ndarray) -> None:
        """Milvus builds its own index; nothing to train here."""

    def add(self, rows: Sequence[ImageRow], vectors: np.ndarray) -> list[int]:
        """Insert rows, upsert their vectors by id, commit one version; returns their ids."""
        if len(rows) != len(vectors):
            raise ValueError("one vector per row")
        if not rows:
            return []
        with self._lock:
            next_version = self._committed() + 1
            with self.sessions.begin() as session:
                for row in rows:
                    row.index_version = next_version
                    row.model_fingerprint = self.fingerprint
                session.add_all(rows)
                session.flush()
                ids = [row.id for row in rows]
            try:
                data = np.ascontiguousarray(vectors, dtype=np.float32)
                for start in range(0, len(ids), UPSERT_BATCH):
                    self.client.upsert(
                        self.collection,
                        [
                            {"id": int(i), "vector": v.tolist()}
                            for i, v in zip(
                                ids[start : start + UPSERT_BATCH],
                                data[start : start + UPSERT_BATCH],
                                strict=True,
                            )
                        ],
                    )
                with self.sessions.begin() as session:
                    self._insert_version(session, next_version, self._count + len(ids))
            except BaseException:
                self._reconcile()
                raise
            self.version = next_version
            self._count += len(ids)
            return ids

    def remove(self, ids: Sequence[int]) -> int:
        """Delete rows (one committed version), then their vectors; returns the count."""
        wanted = sorted({int(i) for i in ids})
        if not wanted:
            return 0
        with self._lock:
            next_version = self._committed() + 1
            found: list[int] = []
            with self.sessions.begin() as session:
                for start in range(0, len(wanted), SQL_CHUNK):
                    chunk = wanted[start : start + SQL_CHUNK]
                    found += list(
                        session.scalars(select(ImageRow.id).where(ImageRow.id.in_(chunk)))
                    )
                    session.execute(delete(ImageRow).where(ImageRow.id.in_(chunk)))
                self._insert_version(session, next_version, self._count - len(found))
            self._delete(found)
            self.version = next_version
            self._count -= len(found)
            return len(found)

    def compact(self, full: bool = False) -> int:
        """Milvus compacts its own segments."""
        return 0

    def _insert_version(self, session: Any, version: int, ntotal: int) -> None:
        session.add(
            IndexVersionRow(
                version=version,
                filename=f"{self.uri}#{self.collection}",
                model_fingerprint=self.fingerprint,
                factory=self.factory,
                ntotal=ntotal,
                committed=True,
            )
        )
