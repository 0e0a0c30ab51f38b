"""The Milvus engine on Milvus Lite: index real images, search, remove, kill -9 and re-run, refuse
another model's collection. The DB stays the system of record; Milvus converges to it."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from indexer.db import ImageRow, make_engine, make_sessionmaker
from indexer.engines import open_index
from indexer.options import IndexOptions
from indexer.pipeline import index_source
from indexer.search import Searcher
from indexer.store import ModelMismatchError
from model.imageio import read_image
from rsir.cli import app
from tests.conftest import make_class_folder
from tests.indexer.test_crash_resume import committed_versions

pytestmark = pytest.mark.slow
runner = CliRunner()


@pytest.fixture(autouse=True, scope="module")
def _stop_milvus_lite_servers() -> Iterator[None]:
    """Stop the embedded servers while pytest still captures output: milvus-lite's own atexit
    hook logs into streams pytest has closed by then ("Logging error" noise after the run)."""
    yield
    from milvus_lite import server_manager_instance

    server_manager_instance.release_all()


def db_and_milvus_ids(index_dir: Path) -> tuple[list[int], list[int]]:
    engine = make_engine(f"sqlite:///{index_dir / 'metadata.db'}")
    with make_sessionmaker(engine)() as session:
        db_ids = sorted(session.scalars(select(ImageRow.id)))
    with open_index(index_dir, engine) as store:
        milvus_ids = store.ids().tolist()
    engine.dispose()
    return db_ids, milvus_ids


def test_milvus_index_search_remove(
    small_folder: Path, trained_checkpoint: Path, other_checkpoint: Path, tmp_path: Path
) -> None:
    index_dir, uri = tmp_path / "idx", tmp_path / "milvus" / "rsir.db"
    args = ["index", str(small_folder), "--checkpoint", str(trained_checkpoint)]
    args += ["--index-dir", str(index_dir), "--num-workers", "0", "--commit-every", "16"]
    args += ["--engine", "milvus", "--milvus-uri", str(uri)]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "added 40" in first.output
    assert uri.exists() and not list(index_dir.glob("segment-*"))  # vectors live in Milvus
    again = runner.invoke(app, args)  # idempotent: nothing new
    assert again.exit_code == 0 and "added 0, already indexed 40" in again.output
    db_ids, milvus_ids = db_and_milvus_ids(index_dir)
    assert db_ids == milvus_ids and len(db_ids) == 40

    query = next((small_folder / "harbor").iterdir())
    searcher = Searcher.open(index_dir, device="cpu")  # the engine comes from the DB
    hits = searcher.search_images([read_image(query)], k=5)[0]
    assert hits[0].path == f"harbor/{query.name}" and hits[0].score > 0.99
    assert all(a.score >= b.score for a, b in itertools.pairwise(hits))
    searcher.store.close()

    removed = runner.invoke(app, ["remove", str(hits[1].id), "--index-dir", str(index_dir)])
    assert removed.exit_code == 0 and "removed 1" in removed.output
    db_ids, milvus_ids = db_and_milvus_ids(index_dir)
    assert db_ids == milvus_ids and len(db_ids) == 39 and hits[1].id not in db_ids

    with pytest.raises(ModelMismatchError):  # the same DB and collection, another model
        index_source(
            small_folder / "beach",
            other_checkpoint,
            IndexOptions(
                index_dir=index_dir, num_workers=0, vector_engine="milvus", milvus_uri=str(uri)
            ),
        )
    with pytest.raises(ModelMismatchError):  # a fresh DB cannot adopt another model's collection
        index_source(
            small_folder / "beach",
            other_checkpoint,
            IndexOptions(
                index_dir=tmp_path / "other",
                num_workers=0,
                vector_engine="milvus",
                milvus_uri=str(uri),
            ),
        )


def test_milvus_run_killed_mid_index_converges(trained_checkpoint: Path, tmp_path: Path) -> None:
    folder = make_class_folder(tmp_path / "src", 30)  # 120 real images
    index_dir, uri = tmp_path / "idx", tmp_path / "milvus.db"
    cmd = [sys.executable, "-m", "rsir", "index", str(folder), "--checkpoint"]
    cmd += [str(trained_checkpoint), "--index-dir", str(index_dir), "--batch-size", "4"]
    cmd += ["--num-workers", "1", "--commit-every", "4", "--engine", "milvus"]
    cmd += ["--milvus-uri", str(uri)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    db = index_dir / "metadata.db"
    deadline = time.monotonic() + 300
    while committed_versions(db) < 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    db_ids, milvus_ids = db_and_milvus_ids(index_dir)
    assert db_ids == milvus_ids and len(db_ids) == 120
    engine = make_engine(f"sqlite:///{db}")
    with make_sessionmaker(engine)() as session:
        paths = list(session.scalars(select(ImageRow.path)))
    engine.dispose()
    assert len(set(paths)) == 120
    assert json.loads((index_dir / "model.json").read_text())["fingerprint"]
