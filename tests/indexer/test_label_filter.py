"""The label filter on a 100k-row index, on SQLite and PostgreSQL: exact, and one for CLI and API.

A label's ids go to FAISS as an id selector, never into one SQL `IN (...)`: PostgreSQL refuses
more than 65,535 parameters in a statement and SQLite 32,766, which a label of a large index
passes. Vectors are random (512-d), the rows are real rows of a real store in a real DB.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from indexer.db import ImageRow, make_engine, make_sessionmaker, upgrade_db
from indexer.search import Searcher
from indexer.store import IndexStore
from model.checkpoint import load_embedder
from rsir_common.settings import Settings
from service.metrics import Metrics
from service.search_engine import SearchEngine, SearchOptions

pytestmark = pytest.mark.slow

N_ROWS = 100_000
N_RARE = 5
DIM = 512  # the embedder's (ResNet-18) descriptor size: the service opens the index with it
K = 10


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def _build(index_dir: Path, db_url: str, fingerprint: str) -> tuple[np.ndarray, list[str]]:
    """100k rows: N_RARE of class "rare", the rest "common"; returns vectors and labels by id."""
    rng = np.random.default_rng(0)
    vectors = _unit(rng.standard_normal((N_ROWS, DIM)))
    labels = ["rare" if i % (N_ROWS // N_RARE) == 7 else "common" for i in range(N_ROWS)]
    upgrade_db(db_url)
    engine = make_engine(db_url)
    rows = [
        ImageRow(
            source="synthetic", path=f"{i:06d}.png", content_hash=f"{i:064x}", width=1,
            height=1, label=label,
        )
        for i, label in enumerate(labels)
    ]  # fmt: skip
    with IndexStore.open(index_dir, engine, fingerprint, DIM, "Flat", writable=True) as store:
        ids = store.add(rows, vectors)
    engine.dispose()
    assert ids == list(range(1, N_ROWS + 1))  # id i+1 is vector i
    return vectors, labels


def _exact(vectors: np.ndarray, labels: list[str], query: np.ndarray, label: str) -> list[int]:
    """Brute-force ids of `label`, best first."""
    scores = vectors @ query
    order = [int(i) for i in np.argsort(-scores, kind="stable") if labels[i] == label]
    return [i + 1 for i in order]


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_label_filter_and_removal_on_100k_rows_for_cli_and_api(
    db_url: str, tmp_path: Path, other_checkpoint: Path, anyio_backend: str
) -> None:
    _, ckpt = load_embedder(other_checkpoint)
    index_dir = tmp_path / "index"
    vectors, labels = _build(index_dir, db_url, ckpt.fingerprint)
    rare_ids = [i + 1 for i, label in enumerate(labels) if label == "rare"]
    query_id = rare_ids[0]
    query = vectors[query_id - 1]

    # The CLI's searcher.
    searcher = Searcher.open(index_dir, other_checkpoint, db_url=db_url, device="cpu")
    rare = searcher.search_vectors(query[None], K, "rare")[0]
    assert [h.id for h in rare] == _exact(vectors, labels, query, "rare")  # all 5, in order
    common = searcher.search_vectors(query[None], K, "common")[0]
    assert [h.id for h in common] == _exact(vectors, labels, query, "common")[:K]
    assert searcher.search_vectors(query[None], K, "no-such-class")[0] == []
    searcher.store.engine.dispose()

    # The service's search engine, loading the same index: the same hits, the query itself
    # left out.
    settings = Settings(
        index_dir=index_dir, db_url=db_url, checkpoint=other_checkpoint, device="cpu"
    )
    engine = make_engine(db_url)
    core = SearchEngine(settings, engine, Metrics())
    core.load()
    try:
        assert core.store is not None and core.store.ntotal == N_ROWS
        similar = await core.similar(query_id, SearchOptions(K, "rare"))
        assert [h.id for h in similar.hits] == [i for i in [h.id for h in rare] if i != query_id]
        similar = await core.similar(query_id, SearchOptions(K, "common"))
        assert [h.id for h in similar.hits] == [h.id for h in common]
        assert all(h.label == "common" for h in similar.hits)
        unfiltered = await core.similar(query_id, SearchOptions(K))
        assert len(unfiltered.hits) == K and query_id not in [h.id for h in unfiltered.hits]
    finally:
        core.close()
        engine.dispose()

    # `rsir remove --source` of (almost) all of them: the DELETE goes in chunks, never with
    # 100k parameters in one statement.
    engine = make_engine(db_url)
    with IndexStore.open(index_dir, engine, ckpt.fingerprint, writable=True) as store:
        removed = store.remove(list(range(1, N_ROWS + 1 - 3)))
        assert removed == N_ROWS - 3 and store.ntotal == 3
    with make_sessionmaker(engine)() as session:
        assert session.scalar(select(func.count()).select_from(ImageRow)) == 3
    engine.dispose()
