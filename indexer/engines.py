"""Which vector engine holds an index: FAISS segments on disk (default) or a Milvus collection.

Callers open an index through `open_index`; an existing index is opened with the engine that
made it (the DB's newest version says which), so `rsir search`, `rsir remove` and the service
need no engine setting once `rsir index --engine milvus` has run.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Protocol

import faiss
import numpy as np
from sqlalchemy import Engine, select

from indexer.db import ImageRow, IndexVersionRow, make_sessionmaker
from indexer.store import IndexStore

ENGINES = ("faiss", "milvus")
MILVUS_PREFIX = "milvus:"


class VectorIndex(Protocol):
    """What the pipeline, the searcher and the service use of an index."""

    index_dir: Path
    engine: Engine
    fingerprint: str
    dim: int
    factory: str
    version: int

    @property
    def ntotal(self) -> int: ...

    def search(
        self, vectors: np.ndarray, k: int, selector: faiss.IDSelector | None = None
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def reload_if_changed(self) -> bool: ...

    def reconstruct(self, image_id: int) -> np.ndarray | None: ...

    def ids(self) -> np.ndarray: ...

    def add(self, rows: list[ImageRow], vectors: np.ndarray) -> list[int]: ...

    def remove(self, ids: list[int]) -> int: ...

    def compact(self, full: bool = False) -> int: ...

    def choose_factory(self, expected: int) -> str: ...

    def needs_training(self) -> bool: ...

    def min_training_vectors(self) -> int: ...

    def train(self, vectors: np.ndarray) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> VectorIndex: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


def _recorded_milvus(engine: Engine) -> tuple[str, str] | None:
    """(uri, collection) when the newest committed version was written to Milvus."""
    with make_sessionmaker(engine)() as session:
        current = session.scalar(
            select(IndexVersionRow)
            .where(IndexVersionRow.committed.is_(True))
            .order_by(IndexVersionRow.version.desc())
            .limit(1)
        )
    if current is None or not current.factory.startswith(MILVUS_PREFIX):
        return None
    uri, _, collection = current.filename.rpartition("#")
    return uri, collection


def open_index(
    index_dir: Path,
    engine: Engine,
    fingerprint: str | None = None,
    dim: int | None = None,
    factory: str | None = None,
    writable: bool = False,
    vector_engine: str | None = None,
    milvus_uri: str | None = None,
    milvus_collection: str = "rsir",
) -> VectorIndex:
    """Open or create the index of `index_dir` with its engine (see the module doc)."""
    recorded = _recorded_milvus(engine)
    if vector_engine not in (None, *ENGINES):
        raise ValueError(f"unknown vector engine {vector_engine!r}; choose one of {ENGINES}")
    if vector_engine == "faiss" and recorded is not None:
        raise ValueError(f"the index of {index_dir} is in Milvus ({recorded[0]})")
    if vector_engine == "milvus" or recorded is not None:
        from indexer.milvus_store import MilvusStore

        uri, collection = recorded or (milvus_uri, milvus_collection)
        if milvus_uri is not None and recorded is not None and milvus_uri != recorded[0]:
            raise ValueError(f"the index of {index_dir} is in Milvus at {recorded[0]}")
        if not uri:
            raise ValueError("the Milvus engine needs a URI (--milvus-uri or RSIR_MILVUS_URI)")
        return MilvusStore.open(
            uri, index_dir, engine, fingerprint, dim, collection=collection, writable=writable
        )
    return IndexStore.open(index_dir, engine, fingerprint, dim, factory, writable=writable)
