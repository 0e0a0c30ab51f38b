"""IndexStore, one operation at a time: add, remove, rollback of a failed write, reload by a
reader, and what open refuses. (test_segments.py checks search against one exact index and
compaction; test_crash_resume.py kills real processes.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine, func, select

import indexer.store
from indexer.db import ImageRow, IndexVersionRow, make_engine, make_sessionmaker, upgrade_db
from indexer.segments import index_files
from indexer.store import IndexStore, ModelMismatchError
from tests.indexer.test_segments import DIM, rows, unit_vectors


@pytest.fixture
def store(engine: Engine, tmp_path: Path) -> Iterator[IndexStore]:
    with IndexStore.open(tmp_path / "idx", engine, "fp", DIM, writable=True) as writer:
        yield writer


def db_rows(engine: Engine) -> list[ImageRow]:
    with make_sessionmaker(engine)() as session:
        return list(session.scalars(select(ImageRow).order_by(ImageRow.id)))


def committed_versions(engine: Engine) -> int:
    with make_sessionmaker(engine)() as session:
        query = select(func.count()).where(IndexVersionRow.committed.is_(True))
        return int(session.scalar(query) or 0)


def test_add_stores_rows_and_vectors_under_one_new_version(
    store: IndexStore, engine: Engine
) -> None:
    vectors = unit_vectors(12, seed=1)
    ids = store.add(rows(12, 0), vectors)
    assert len(set(ids)) == 12 and store.ntotal == 12 and store.version == 1
    stored = db_rows(engine)
    assert [r.id for r in stored] == ids
    assert {(r.index_version, r.model_fingerprint) for r in stored} == {(1, "fp")}
    assert committed_versions(engine) == 1
    scores, found = store.search(vectors, 1)
    assert found[:, 0].tolist() == ids  # every vector finds itself first
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    np.testing.assert_allclose(store.reconstruct(ids[3]), vectors[3], atol=1e-6)
    assert store.add([], np.zeros((0, DIM), np.float32)) == [] and store.version == 1


def test_add_refuses_rows_and_vectors_of_different_counts(
    store: IndexStore, engine: Engine
) -> None:
    with pytest.raises(ValueError, match="one vector per row"):
        store.add(rows(3, 0), unit_vectors(2, seed=0))
    assert db_rows(engine) == [] and store.version == 0


def test_remove_deletes_rows_and_hides_their_vectors(store: IndexStore, engine: Engine) -> None:
    vectors = unit_vectors(10, seed=2)
    ids = store.add(rows(10, 0), vectors)
    gone = ids[::3]
    assert store.remove([*gone, 10_000]) == len(gone)  # an unknown id is not counted
    kept = [i for i in ids if i not in gone]
    assert [r.id for r in db_rows(engine)] == kept
    assert store.ntotal == len(kept) and store.ids().tolist() == kept
    assert store.reconstruct(gone[0]) is None
    _, found = store.search(vectors, len(ids))
    assert not set(found.ravel().tolist()) & set(gone)
    assert store.remove([]) == 0 and store.remove(gone) == 0  # nothing left to remove
    assert store.ntotal == len(kept)


def test_removing_only_unknown_ids_commits_no_version(store: IndexStore, engine: Engine) -> None:
    # `rsir remove` skips unknown ids; with none known it must leave the index as it was (no
    # empty version for the service to reload), as DELETE of an unknown id does.
    ids = store.add(rows(4, 0), unit_vectors(4, seed=3))
    before = (store.version, committed_versions(engine))
    assert store.remove([max(ids) + 1, max(ids) + 2]) == 0
    assert (store.version, committed_versions(engine)) == before
    assert [r.id for r in db_rows(engine)] == ids


def test_a_failed_segment_write_rolls_back_rows_and_files(
    store: IndexStore, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = store.add(rows(5, 0), unit_vectors(5, seed=3))
    files_before = sorted(p.name for p in index_files(store.index_dir))

    def disk_full(index: object, path: Path) -> int:
        path.write_bytes(b"half a segment")  # the file exists when the failure comes
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(indexer.store, "write_index_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        store.add(rows(4, 5), unit_vectors(4, seed=4))
    assert [r.id for r in db_rows(engine)] == first  # the new rows are gone
    assert sorted(p.name for p in index_files(store.index_dir)) == files_before
    assert store.version == 1 and store.ntotal == 5 and committed_versions(engine) == 1

    monkeypatch.undo()
    again = store.add(rows(4, 5), unit_vectors(4, seed=4))
    assert store.version == 2 and store.ntotal == 9
    assert [r.id for r in db_rows(engine)] == first + again


def test_a_writer_discards_rows_of_an_uncommitted_version_at_open(
    engine: Engine, tmp_path: Path
) -> None:
    with IndexStore.open(tmp_path / "idx", engine, "fp", DIM, writable=True) as writer:
        ids = writer.add(rows(6, 0), unit_vectors(6, seed=5))
    with make_sessionmaker(engine).begin() as session:  # what a killed run leaves behind
        orphans = rows(3, 6)
        for row in orphans:
            row.index_version, row.model_fingerprint = 2, "fp"
        session.add_all(orphans)
    assert len(db_rows(engine)) == 9
    with IndexStore.open(tmp_path / "idx", engine, "fp", writable=True) as writer:
        assert [r.id for r in db_rows(engine)] == ids
        assert writer.version == 1 and writer.ntotal == 6


def test_a_reader_reloads_what_a_writer_commits(store: IndexStore, engine: Engine) -> None:
    first = store.add(rows(8, 0), unit_vectors(8, seed=6))
    reader = IndexStore.open(store.index_dir, engine, "fp")
    assert reader.ntotal == 8 and not reader.reload_if_changed()
    vectors = unit_vectors(4, seed=7)
    added = store.add(rows(4, 8), vectors)
    assert reader.ntotal == 8  # not seen before the reload
    assert reader.reload_if_changed() and reader.version == store.version
    assert reader.ids().tolist() == sorted(first + added)
    assert reader.search(vectors, 1)[1][:, 0].tolist() == added
    store.remove(added[:2])
    assert reader.reload_if_changed() and reader.ntotal == 10
    assert not set(reader.search(vectors, 12)[1].ravel().tolist()) & set(added[:2])
    assert not reader.reload_if_changed()


def test_open_refuses_another_model_a_missing_index_and_a_second_writer(
    store: IndexStore, engine: Engine, tmp_path: Path
) -> None:
    store.add(rows(2, 0), unit_vectors(2, seed=8))
    with pytest.raises(ModelMismatchError, match=r"model fp; this checkpoint is model other"):
        IndexStore.open(store.index_dir, engine, "other")
    with pytest.raises(RuntimeError, match="another process is writing"):
        IndexStore.open(store.index_dir, engine, "fp", writable=True)
    empty = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    upgrade_db(f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(FileNotFoundError, match="rsir index"):
        IndexStore.open(tmp_path / "none", empty)
    empty.dispose()
