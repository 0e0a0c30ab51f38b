"""A real `rsir index` process killed mid-run, then re-run: index and DB agree, nothing lost."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from indexer.db import ImageRow, make_engine, make_sessionmaker
from indexer.store import IndexStore
from tests.conftest import make_class_folder
from tests.indexer.segment_writer import vector

pytestmark = pytest.mark.slow


def committed_versions(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=1) as conn:
            return int(conn.execute("select count(*) from index_versions").fetchone()[0])
    except sqlite3.Error:
        return 0


def test_killed_index_run_resumes_consistently(trained_checkpoint: Path, tmp_path: Path) -> None:
    folder = make_class_folder(tmp_path / "src", 30)  # 120 real images
    index_dir = tmp_path / "idx"
    db = index_dir / "metadata.db"
    cmd = [
        sys.executable,
        "-m",
        "rsir",
        "index",
        str(folder),
        "--checkpoint",
        str(trained_checkpoint),
        "--index-dir",
        str(index_dir),
        "--batch-size",
        "4",
        "--num-workers",
        "1",
        "--commit-every",
        "4",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 240
    while committed_versions(db) < 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"

    engine = make_engine(f"sqlite:///{db}")
    with make_sessionmaker(engine)() as session:
        rows_before = len(list(session.scalars(select(ImageRow.id))))
    assert 0 < rows_before < 120

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    with make_sessionmaker(engine)() as session:
        rows = list(session.scalars(select(ImageRow)))
    store = IndexStore.open(index_dir, engine)
    index_ids = store.ids().tolist()
    assert sorted(r.id for r in rows) == index_ids
    assert len(rows) == 120 and len({(r.source, r.path) for r in rows}) == 120
    engine.dispose()


WRITER = Path(__file__).with_name("segment_writer.py")
REPO = Path(__file__).resolve().parents[2]


def _writer(index_dir: Path, url: str, *args: str) -> list[str]:
    return [sys.executable, str(WRITER), str(index_dir), url, *args]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _kill_when(cmd: list[str], ready: Callable[[], bool], timeout: float = 240) -> bool:
    """Run cmd, SIGKILL it as soon as `ready()`; False if it ended first."""
    process = subprocess.Popen(
        cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if ready():
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.001)
    process.wait()
    return False


def _consistent(index_dir: Path, url: str, expected: int | None = None) -> list[int]:
    """Reopen for writing (the crash recovery), then: index ids == DB ids, no duplicates."""
    engine = make_engine(url)
    with IndexStore.open(index_dir, engine, writable=True) as store:
        ids = store.ids().tolist()
        assert store.ntotal == len(ids)
    with make_sessionmaker(engine)() as session:
        rows = list(session.scalars(select(ImageRow)))
    engine.dispose()
    assert sorted(r.id for r in rows) == ids
    assert len(set(ids)) == len(ids) and len({r.path for r in rows}) == len(rows)
    assert not list(index_dir.glob("*.tmp"))
    if expected is not None:
        assert len(ids) == expected
    return ids


def _writing_after_commits(index_dir: Path, db: Path, commits: int) -> Callable[[], bool]:
    """True while a segment file is half-written and `commits` versions are committed."""
    return lambda: any(index_dir.glob("segment-*.tmp")) and committed_versions(db) >= commits


def test_killed_during_a_segment_write_recovers(tmp_path: Path) -> None:
    index_dir = tmp_path / "idx"
    url = f"sqlite:///{tmp_path / 'm.db'}"
    # 8 commits of 4,096 x 2,048-d vectors: 32 MB per segment, so the kill lands mid-write
    cmd = _writer(index_dir, url, "32768", "4096", "2048", "--no-compact")
    killed_mid_write = False
    for attempt in range(3):
        if not _kill_when(cmd, _writing_after_commits(index_dir, tmp_path / "m.db", 2 + attempt)):
            break
        killed_mid_write = any(index_dir.glob("segment-*.tmp"))
        _consistent(index_dir, url)
        if killed_mid_write:
            break
    assert killed_mid_write, "never caught a segment half-written"
    rerun = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    _consistent(index_dir, url, expected=32768)


def test_killed_during_compaction_recovers_and_resumes(tmp_path: Path) -> None:
    index_dir = tmp_path / "idx"
    url = f"sqlite:///{tmp_path / 'm.db'}"
    build = subprocess.run(
        _writer(index_dir, url, "16384", "1024", "1024", "--no-compact"),
        env=_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    engine = make_engine(url)
    with IndexStore.open(index_dir, engine, writable=True) as store:
        removed = store.ids()[::10].tolist()  # 10 % of the ids
        store.auto_compact = False
        assert store.remove(removed) == len(removed)
        assert store.segment_count == 16
    engine.dispose()
    compact = [sys.executable, "-m", "rsir", "compact", "--index-dir", str(index_dir)]
    compact += ["--db", url, "--no-full", "--merge-factor", "2"]  # 15 merges, one commit each
    first_merge = committed_versions(tmp_path / "m.db") + 1
    assert _kill_when(
        compact,
        lambda: (
            committed_versions(tmp_path / "m.db") >= first_merge
            and any(index_dir.glob("segment-*.tmp"))
        ),
    ), "compaction ended before it could be killed"
    ids = _consistent(index_dir, url, expected=16384 - len(removed))
    assert not set(ids) & set(removed)
    engine = make_engine(url)
    with IndexStore.open(index_dir, engine) as reader:
        assert 1 < reader.segment_count < 16  # some merges committed, not all
    engine.dispose()
    resumed = subprocess.run(compact, env=_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    ids = _consistent(index_dir, url, expected=16384 - len(removed))
    engine = make_engine(url)
    with IndexStore.open(index_dir, engine, writable=True) as store:
        store.policy = replace(store.policy, factor=2)
        assert store.compact() == 0  # the re-run finished what the killed run had started
    with IndexStore.open(index_dir, engine) as reader:
        assert reader.segment_count < 16
        queries = np.stack([vector(i, 1024) for i in range(0, 16384, 97)])
        _, got = reader.search(queries, 50)
        assert not set(got.ravel().tolist()) & set(removed)
        assert (got[:, 0] >= 0).all()
    engine.dispose()
