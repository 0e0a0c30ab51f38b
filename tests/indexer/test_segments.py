"""The segmented index: commits write only new vectors, search equals one index, tombstones hide."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np
import pytest
from sqlalchemy import func, select

from indexer.compaction import MergePolicy
from indexer.db import (
    ImageRow,
    IndexSegmentRow,
    IndexVersionRow,
    TombstoneRow,
    make_engine,
    make_sessionmaker,
    upgrade_db,
)
from indexer.factory import lossy
from indexer.segments import VectorRows, write_vectors_file
from indexer.store import IndexStore, new_faiss_index

DIM = 48


def unit_vectors(n: int, seed: int, dim: int = DIM) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def rows(n: int, start: int) -> list[ImageRow]:
    return [
        ImageRow(source="s", path=f"p{start + i}", content_hash="-", width=1, height=1)
        for i in range(n)
    ]


class Archive:
    """A writable store plus the ground truth of what it should hold."""

    def __init__(self, tmp_path: Path, url: str, factory: str = "Flat") -> None:
        upgrade_db(url)
        self.url = url
        self.dir = tmp_path / "idx"
        self.engine = make_engine(url)
        self.store = IndexStore.open(self.dir, self.engine, "fp", DIM, factory, writable=True)
        self.vectors: dict[int, np.ndarray] = {}
        self.added = 0

    def add(self, n: int) -> list[int]:
        vectors = unit_vectors(n, seed=self.added)
        ids = self.store.add(rows(n, self.added), vectors)
        self.added += n
        self.vectors.update(zip(ids, vectors, strict=True))
        return ids

    def remove(self, ids: list[int]) -> int:
        for i in ids:
            self.vectors.pop(i, None)
        return self.store.remove(ids)

    def exact(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        ids = np.asarray(sorted(self.vectors), np.int64)
        flat = new_faiss_index(DIM, "Flat")
        flat.add_with_ids(np.stack([self.vectors[i] for i in ids]), ids)
        return flat.search(queries, k)

    def db_ids(self) -> list[int]:
        with make_sessionmaker(self.engine)() as session:
            return sorted(session.scalars(select(ImageRow.id)))

    def close(self) -> None:
        self.store.close()
        self.engine.dispose()


@pytest.fixture
def archive(db_url: str, tmp_path: Path):
    arch = Archive(tmp_path, db_url)
    yield arch
    arch.close()


def assert_same_as_one_index(store: IndexStore, arch: Archive, k: int = 10) -> None:
    queries = unit_vectors(20, seed=10_000)
    scores, ids = store.search(queries, k)
    ref_scores, ref_ids = arch.exact(queries, k)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)


def test_segments_search_exactly_like_one_index(archive: Archive) -> None:
    archive.store.auto_compact = False
    for n in (40, 1, 75, 33, 64, 5):
        archive.add(n)
    store = archive.store
    assert store.segment_count == 6 and store.ntotal == 218
    assert_same_as_one_index(store, archive)
    assert_same_as_one_index(store, archive, k=218)  # the whole ranking, not only the head
    assert store.ids().tolist() == archive.db_ids()


def test_each_commit_writes_one_file_of_only_its_vectors(tmp_path: Path) -> None:
    arch = Archive(tmp_path, f"sqlite:///{tmp_path / 'm.db'}")
    arch.store.auto_compact = False
    sizes, first_stat = [], None
    for _ in range(5):
        before = arch.store.bytes_written
        arch.add(200)
        sizes.append(arch.store.bytes_written - before)
        files = sorted(arch.dir.glob("segment-*.faiss"))
        if first_stat is None:
            first_stat = files[0].stat()
    assert len(files) == 5
    assert max(sizes) == min(sizes)  # the fifth commit costs what the first did
    assert sizes[0] < 200 * DIM * 4 * 1.2  # its own vectors (+ ids), not the archive's
    again = files[0].stat()
    assert (again.st_ino, again.st_mtime_ns) == (first_stat.st_ino, first_stat.st_mtime_ns)
    arch.close()


def test_removed_ids_are_never_returned_and_compaction_reclaims_them(archive: Archive) -> None:
    archive.store.auto_compact = False
    for _ in range(8):
        archive.add(50)
    rng = np.random.default_rng(1)
    removed = rng.choice(sorted(archive.vectors), size=40, replace=False).tolist()  # 10 %
    assert archive.remove(removed) == 40
    assert archive.db_ids() == sorted(archive.vectors)
    store = archive.store
    assert store.ntotal == 360

    def never_returned() -> None:
        _, ids = store.search(unit_vectors(30, seed=5), store.ntotal + 50)
        assert not set(ids.ravel().tolist()) & set(removed)
        assert set(ids[0].tolist()) - {-1} == set(archive.vectors)

    never_returned()
    assert_same_as_one_index(store, archive)
    with make_sessionmaker(archive.engine)() as session:
        assert session.scalar(select(func.count()).select_from(TombstoneRow)) == 40
    assert store.compact(full=True) >= 1
    assert store.segment_count == 1
    with make_sessionmaker(archive.engine)() as session:
        assert session.scalar(select(func.count()).select_from(TombstoneRow)) == 0
    never_returned()
    assert_same_as_one_index(store, archive)
    assert len(list(archive.dir.glob("segment-*"))) == 1  # merged files are deleted
    reader = IndexStore.open(archive.dir, archive.engine)
    assert reader.ids().tolist() == archive.db_ids()
    assert_same_as_one_index(reader, archive)


def test_tier_policy_keeps_segments_few_and_results_exact(archive: Archive) -> None:
    archive.store.policy = MergePolicy(factor=3, unit=20)
    for _ in range(14):
        archive.add(20)
    # 14 commits in base 3 = 112: one 180, one 60, two 20
    with make_sessionmaker(archive.engine)() as session:
        live = session.scalars(
            select(IndexSegmentRow.ntotal).where(IndexSegmentRow.dropped_version.is_(None))
        ).all()
    assert sorted(live) == [20, 20, 60, 180]
    assert archive.store.segment_count == 4
    assert_same_as_one_index(archive.store, archive)
    assert archive.store.ids().tolist() == archive.db_ids()


def test_reader_loads_only_the_new_segments(archive: Archive) -> None:
    archive.store.auto_compact = False
    archive.add(30)
    archive.add(30)
    reader = IndexStore.open(archive.dir, archive.engine)
    held = dict(reader._loaded)
    assert not reader.reload_if_changed()
    new_ids = archive.add(25)
    assert reader.reload_if_changed()
    assert reader.ntotal == 85 and reader.version == archive.store.version
    for sid, seg in held.items():
        assert reader._loaded[sid] is seg  # the old segments were not read again
    assert_same_as_one_index(reader, archive)
    gone = [new_ids[0], *list(archive.vectors)[:3]]
    archive.remove(gone)
    assert reader.reload_if_changed()
    _, ids = reader.search(unit_vectors(5, seed=3), 100)
    assert not set(ids.ravel().tolist()) & set(gone)
    archive.store.compact(full=True)
    assert reader.reload_if_changed() and reader.segment_count == 1
    assert_same_as_one_index(reader, archive)


def test_selector_keyword_combines_with_tombstones(archive: Archive) -> None:
    archive.store.auto_compact = False
    ids = archive.add(60) + archive.add(60)
    archive.remove(ids[::4])
    wanted = np.asarray(ids[::2], dtype=np.int64)  # half of them already removed
    selector = faiss.IDSelectorBatch(wanted.size, faiss.swig_ptr(wanted))
    _, got = archive.store.search(unit_vectors(4, seed=9), 200, selector=selector)
    expected = set(wanted.tolist()) - set(ids[::4])
    for row in got:
        assert set(row.tolist()) - {-1} == expected


def test_ivf_segments_share_one_training_and_survive_reopen(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    arch = Archive(tmp_path, url, factory="IVF8,Flat")
    store = arch.store
    store.auto_compact = False
    assert store.needs_training()
    store.train(unit_vectors(400, seed=77))
    arch.add(100)
    arch.add(100)
    store.close()
    reopened = IndexStore.open(arch.dir, arch.engine, "fp", DIM, writable=True)
    assert not reopened.needs_training()  # the template comes from a segment
    arch.store = reopened
    reopened.auto_compact = False
    arch.add(100)
    quantizers = [faiss.extract_index_ivf(seg.index).quantizer for seg in reopened._ensure_loaded()]
    centroids = [q.reconstruct_n(0, q.ntotal) for q in quantizers]
    for c in centroids[1:]:
        np.testing.assert_array_equal(c, centroids[0])
    assert_same_as_one_index(reopened, arch)  # nprobe = nlist: exact
    reopened.compact(full=True)
    assert reopened.segment_count == 1
    assert_same_as_one_index(reopened, arch)
    arch.close()


def test_legacy_whole_index_file_becomes_a_segment(db_url: str, tmp_path: Path) -> None:
    """An index written by the one-file-per-version store keeps working after the migration."""
    upgrade_db(db_url, "0003_geo")  # the schema before segments
    index_dir = tmp_path / "idx"
    index_dir.mkdir()
    engine = make_engine(db_url)
    vectors = unit_vectors(30, seed=4)
    with make_sessionmaker(engine).begin() as session:
        old_rows = rows(30, 0)
        for row in old_rows:
            row.index_version, row.model_fingerprint = 2, "fp"
        session.add_all(old_rows)
        session.flush()
        ids = [r.id for r in old_rows]
        for version in (1, 2):
            session.add(
                IndexVersionRow(
                    version=version, filename=f"index-v{version:08d}.faiss",
                    model_fingerprint="fp", factory="Flat", ntotal=30, committed=True,
                )
            )  # fmt: skip
    legacy = new_faiss_index(DIM, "Flat")
    legacy.add_with_ids(vectors, np.asarray(ids, np.int64))
    faiss.write_index(legacy, str(index_dir / "index-v00000002.faiss"))
    upgrade_db(db_url)
    with IndexStore.open(index_dir, engine, "fp", DIM, writable=True) as store:
        assert store.ntotal == 30 and store.segment_count == 1
        assert store.remove(ids[:3]) == 3
        new = store.add(rows(5, 100), unit_vectors(5, seed=8))
        assert store.ids().tolist() == sorted(ids[3:] + new)
        _, top = store.search(vectors[5:6], 1)
        assert top[0, 0] == ids[5]
    engine.dispose()
    assert (index_dir / "index-v00000002.faiss").exists()


def test_empty_segments_are_dropped_when_everything_is_removed(archive: Archive) -> None:
    ids = archive.add(10)
    assert archive.remove(ids) == 10  # purge ratio reached: compaction drops the segment
    assert archive.store.ntotal == 0 and archive.store.segment_count == 0
    _, got = archive.store.search(unit_vectors(2, seed=1), 5)
    assert got.shape == (2, 0)
    assert not [p for p in os.listdir(archive.dir) if p.startswith("segment-")]
    archive.store.policy = replace(archive.store.policy, factor=2)
    archive.add(4)
    assert archive.store.ids().tolist() == archive.db_ids()


@pytest.mark.parametrize("factory", ["IVF4,Flat", "PCA16,IVF4,SQ8", "HNSW8"])
def test_compaction_keeps_results_of_approximate_indexes(factory: str, tmp_path: Path) -> None:
    arch = Archive(tmp_path, f"sqlite:///{tmp_path / 'm.db'}", factory=factory)
    store = arch.store
    store.auto_compact = False
    if store.needs_training():
        store.train(unit_vectors(300, seed=99))
    ids = arch.add(80) + arch.add(80) + arch.add(80)
    removed = ids[::12]
    arch.remove(removed)
    queries = unit_vectors(25, seed=123)
    before = store.search(queries, 10)[1]
    store.compact(full=True)
    assert store.segment_count == 1 and store.ntotal == 240 - len(removed)
    assert store.ids().tolist() == arch.db_ids()
    after = store.search(queries, 10)[1]
    assert not set(after.ravel().tolist()) & set(removed)
    if factory.startswith("HNSW") or lossy(factory):  # rebuilt graph / other candidate pool
        exact = arch.exact(queries, 10)[1]
        for got in (before, after):
            hits = sum(len(set(g) & set(e)) for g, e in zip(got, exact, strict=True))
            assert hits / exact.size >= (0.85 if lossy(factory) else 0.95)  # PCA 48->16: lossy
    else:  # the same codes, every list probed: the same ranking
        np.testing.assert_array_equal(before, after)
    arch.close()


def test_auto_factory_follows_the_archive_size() -> None:
    from indexer.factory import auto_factory, nlist_for

    assert auto_factory(100_000, 2048) == "Flat"  # 0.8 GB of float32
    assert auto_factory(1_000_000, 2048) == "IVF4096,SQ8"  # 2 GB of codes
    assert auto_factory(10_000_000, 2048) == "IVF8192,PQ64np"  # 640 MB of codes
    assert auto_factory(10_000_000, 128) == "IVF8192,SQ8"
    assert nlist_for(1_000) == 256 and nlist_for(250_000) == 2048
    assert lossy("IVF4096,SQ8") and lossy("IVF8192,PQ64") and not lossy("IVF1024,Flat")


def test_compressed_segments_rerank_exactly_from_vectors_on_disk(tmp_path: Path) -> None:
    arch = Archive(tmp_path, f"sqlite:///{tmp_path / 'm.db'}", factory="IVF4,PQ4")
    store = arch.store
    store.auto_compact = False
    assert store.min_training_vectors() == 4 * 30
    store.train(unit_vectors(600, seed=42))
    ids = arch.add(150) + arch.add(150) + arch.add(150)
    assert len(list(arch.dir.glob("segment-*.vectors.npy"))) == 3
    removed = ids[::10]
    arch.remove(removed)
    queries = unit_vectors(20, seed=321)
    _, exact_ids = arch.exact(queries, 10)

    def check(s: IndexStore) -> None:
        scores, got = s.search(queries, 10)
        assert not set(got.ravel().tolist()) & set(removed)
        # scores are exact inner products, not PQ estimates
        for q, row_ids, row_scores in zip(queries, got, scores, strict=True):
            expected = np.stack([arch.vectors[int(i)] for i in row_ids]) @ q
            np.testing.assert_allclose(row_scores, expected, atol=1e-5)
        hits = sum(len(set(g) & set(e)) for g, e in zip(got, exact_ids, strict=True))
        assert hits / exact_ids.size >= 0.9  # PQ4 alone: well below (checked below)

    check(store)
    codes_only = [seg.index.search(queries, 10)[1] for seg in store._ensure_loaded()]
    assert codes_only  # the PQ-only ranking, for contrast
    store.compact(full=True)
    assert store.segment_count == 1
    assert len(list(arch.dir.glob("segment-*.vectors.npy"))) == 1
    check(store)
    reader = IndexStore.open(arch.dir, arch.engine)
    seg = reader._ensure_loaded()[0]
    assert isinstance(seg.vectors, VectorRows)  # on disk, read row by row, not whole
    check(reader)
    vector = reader.reconstruct(ids[1])
    assert vector is not None
    np.testing.assert_array_equal(vector, arch.vectors[ids[1]])
    arch.close()


def test_indexing_trains_on_a_random_sample_of_the_archive(
    small_folder: Path, trained_checkpoint: Path, tmp_path: Path
) -> None:
    from indexer.options import IndexOptions
    from indexer.pipeline import index_source

    index_dir = tmp_path / "idx"
    options = IndexOptions(
        index_dir=index_dir,
        index_factory="IVF1,Flat",  # needs 30 training vectors; train_size asks for only 8
        num_workers=0,
        batch_size=4,
        commit_every=4,
        train_size=8,
    )
    summary = index_source(small_folder, trained_checkpoint, options)
    assert summary.added == 40
    engine = make_engine(f"sqlite:///{index_dir / 'metadata.db'}")
    with make_sessionmaker(engine)() as session:
        first = session.scalar(select(func.min(ImageRow.index_version)))
        trained_on = list(session.scalars(select(ImageRow).where(ImageRow.index_version == first)))
    engine.dispose()
    assert len(trained_on) >= 30  # 30 x nlist, not the 8 asked for
    assert len({row.label for row in trained_on}) == 4  # drawn from every class, not the first


def _rss_file_kib() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("RssFile:"))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_rerank_rows_are_read_without_growing_the_process(tmp_path: Path) -> None:
    """Scattered rows come back exact, and the process's resident file pages stay flat.

    A memory map here would leave about the whole 64 MiB file resident after 4,000 scattered
    rows (fault-around maps 64 KiB per touched row); `pread` copies only the rows.
    """
    vectors = unit_vectors(64_000, seed=5, dim=256)  # 64 MiB of float32
    path = tmp_path / "segment-00000001.vectors.npy"
    write_vectors_file([vectors[:40_000], vectors[40_000:]], path)
    rows = VectorRows(path)
    assert len(rows) == 64_000 and rows.shape == (64_000, 256)
    wanted = np.random.default_rng(0).integers(0, 64_000, 4_000)
    before = _rss_file_kib()
    got = rows[wanted]
    grown_kib = _rss_file_kib() - before
    np.testing.assert_array_equal(got, vectors[wanted])
    np.testing.assert_array_equal(rows[17], vectors[17])
    assert grown_kib < 4 * 1024, f"resident file pages grew by {grown_kib} KiB"
    with pytest.raises(IndexError):
        rows[np.array([64_000])]
    mapped = np.load(path, mmap_mode="r")
    before = _rss_file_kib()
    np.asarray(mapped[np.sort(wanted)])
    assert _rss_file_kib() - before > 8 * grown_kib + 16 * 1024  # what the map would cost
    rows.close()
