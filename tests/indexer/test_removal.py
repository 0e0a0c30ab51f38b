"""`remove_images` (indexer/removal.py), the one removal of `rsir remove` and the service, on
SQLite and PostgreSQL: one committed version, the index's size after it, and what it refuses
(an unknown id when asked, another model, a held writer lock) without removing anything.
(tests/service/test_removal.py checks that both callers go through it and agree.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from indexer.db import ImageRow, IndexVersionRow, make_sessionmaker
from indexer.removal import (
    IndexBusyError,
    UnknownImageError,
    remove_images,
    source_image_ids,
)
from indexer.sources import canonical_source
from indexer.store import IndexStore, ModelMismatchError
from tests.indexer.test_segments import DIM, rows, unit_vectors


@pytest.fixture
def index(engine: Engine, tmp_path: Path) -> tuple[Path, list[int]]:
    """An index of 12 vectors in two segments (two commits); its dir and the ids."""
    index_dir = tmp_path / "idx"
    with IndexStore.open(index_dir, engine, "fp", DIM, writable=True) as writer:
        ids = writer.add(rows(6, 0), unit_vectors(6, seed=1))
        ids += writer.add(rows(6, 6), unit_vectors(6, seed=2))
    return index_dir, ids


def _state(engine: Engine, index_dir: Path) -> tuple[list[int], int, list[int]]:
    """DB ids, committed versions, and the ids a fresh reader of the index holds."""
    with make_sessionmaker(engine)() as session:
        db_ids = list(session.scalars(select(ImageRow.id).order_by(ImageRow.id)))
        versions = session.scalar(select(func.count()).where(IndexVersionRow.committed.is_(True)))
    with IndexStore.open(index_dir, engine) as reader:
        return db_ids, int(versions or 0), sorted(reader.ids().tolist())


def test_removal_is_one_version_and_reports_the_size_after_it(
    engine: Engine, index: tuple[Path, list[int]]
) -> None:
    index_dir, ids = index
    _, versions, _ = _state(engine, index_dir)
    gone = [ids[0], ids[7], 10_000]  # one of each segment, and an id that is not there
    removal = remove_images(index_dir, engine, gone)
    assert (removal.removed, removal.ntotal) == (2, len(ids) - 2)  # the unknown id is skipped
    kept = [i for i in ids if i not in gone]
    assert _state(engine, index_dir) == (kept, versions + 1, kept)


def test_refusals_remove_nothing(engine: Engine, index: tuple[Path, list[int]]) -> None:
    index_dir, ids = index
    before = _state(engine, index_dir)
    with pytest.raises(UnknownImageError, match="no image with id 10000"):
        remove_images(index_dir, engine, [ids[0], 10_000], require_known=True)
    with pytest.raises(ModelMismatchError):
        remove_images(index_dir, engine, [ids[0]], fingerprint="another-model")
    held = IndexStore.open(index_dir, engine, writable=True)  # an index run holds the lock
    with held, pytest.raises(IndexBusyError, match="another process is writing"):
        remove_images(index_dir, engine, [ids[0]])
    assert isinstance(IndexBusyError("x"), RuntimeError)  # what `rsir remove` reports
    assert _state(engine, index_dir) == before
    assert remove_images(index_dir, engine, [ids[0]], require_known=True).removed == 1


def test_a_source_is_found_as_given_or_as_recorded(engine: Engine, tmp_path: Path) -> None:
    source = tmp_path / "archive"
    source.mkdir()
    recorded = rows(3, 0)
    for row in recorded:
        row.source = canonical_source(source)
    with IndexStore.open(tmp_path / "idx", engine, "fp", DIM, writable=True) as writer:
        ids = writer.add(recorded, unit_vectors(3, seed=4))
        writer.add(rows(2, 3), unit_vectors(2, seed=5))  # another source
    assert source_image_ids(engine, str(source / ".." / "archive")) == ids
    assert source_image_ids(engine, canonical_source(source)) == ids
    assert source_image_ids(engine, str(tmp_path / "nothing")) == []
