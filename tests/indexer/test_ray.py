"""Indexing through a local Ray cluster (2 CPUs) gives the single-process vectors and rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from indexer.db import ImageRow, make_engine, make_sessionmaker
from indexer.options import IndexOptions
from indexer.pipeline import index_source
from indexer.store import IndexStore
from tests.conftest import make_class_folder

pytestmark = pytest.mark.slow


def vectors_by_path(index_dir: Path) -> dict[str, np.ndarray]:
    engine = make_engine(f"sqlite:///{index_dir / 'metadata.db'}")
    with make_sessionmaker(engine)() as session:
        rows = list(session.scalars(select(ImageRow)))
    store = IndexStore.open(index_dir, engine)
    assert store.ids().tolist() == sorted(r.id for r in rows)
    out = {}
    for row in rows:
        vector = store.reconstruct(row.id)
        assert vector is not None
        out[row.path] = vector
    engine.dispose()
    return out


def test_ray_indexing_gives_the_single_process_vectors(
    trained_checkpoint: Path, tmp_path: Path
) -> None:
    import ray

    folder = make_class_folder(tmp_path / "src", 10)  # 40 real images
    (folder / "beach" / "notes.txt").write_text("not an image")  # listed as non-image
    (folder / "forest" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")  # skipped, counted
    local = index_source(
        folder,
        trained_checkpoint,
        IndexOptions(index_dir=tmp_path / "local", num_workers=0, batch_size=8),
    )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = index_source(
            folder,
            trained_checkpoint,
            IndexOptions(
                index_dir=tmp_path / "ray", batch_size=8, commit_every=16, ray_address="local"
            ),
        )
    finally:
        ray.shutdown()
    assert remote.added == local.added == 40 and remote.non_image == 1
    assert remote.corrupt == local.corrupt == 1 and remote.failed[0][0] == "forest/broken.jpg"
    mine, theirs = vectors_by_path(tmp_path / "local"), vectors_by_path(tmp_path / "ray")
    assert mine.keys() == theirs.keys()
    for path, vector in mine.items():
        cosine = float(vector @ theirs[path]) / float(
            np.linalg.norm(vector) * np.linalg.norm(theirs[path])
        )
        assert cosine >= 0.999, path
