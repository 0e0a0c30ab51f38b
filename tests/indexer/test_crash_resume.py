"""A real `rsir index` process killed mid-run, then re-run: index and DB agree, nothing lost."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import faiss
import pytest
from sqlalchemy import select

from indexer.db import ImageRow, make_engine, make_sessionmaker
from indexer.store import IndexStore
from tests.conftest import make_class_folder

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
    index_ids = sorted(faiss.vector_to_array(store.index.id_map).tolist())
    assert sorted(r.id for r in rows) == index_ids
    assert len(rows) == 120 and len({(r.source, r.path) for r in rows}) == 120
    engine.dispose()
