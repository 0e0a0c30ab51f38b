"""FAISS filtered search through IndexStore.search(selector=...) for exact and approximate
indexes: only selected ids come back, and the approximate indexes keep their nprobe/efSearch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from indexer.area import id_selector
from indexer.db import ImageRow, make_engine, upgrade_db
from indexer.store import IndexStore


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF16,Flat"])
def test_selector_limits_the_search_to_its_ids(factory: str, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade_db(url)
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(600, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with IndexStore.open(tmp_path, make_engine(url), "fp", 16, factory, writable=True) as store:
        if store.needs_training():
            store.train(vectors)
        rows = [
            ImageRow(source="s", path=f"{i}.jpg", content_hash="h", width=1, height=1)
            for i in range(len(vectors))
        ]
        ids = np.asarray(store.add(rows, vectors))
        chosen = ids[rng.choice(len(ids), 40, replace=False)]
        query = vectors[:3]
        _, found = store.search(query, 10, selector=id_selector(chosen))
        assert set(found[found >= 0].tolist()) <= set(chosen.tolist())
        # Exact for Flat: the top 10 of the chosen ids by inner product.
        if factory == "Flat":
            order = {int(i): n for n, i in enumerate(ids)}
            for q, row in zip(query, found, strict=True):
                expected = sorted(chosen.tolist(), key=lambda i: -float(vectors[order[i]] @ q))
                assert row.tolist() == expected[:10]
        unfiltered = store.search(query, 10)[1]
        assert not set(unfiltered.ravel().tolist()) <= set(chosen.tolist())
