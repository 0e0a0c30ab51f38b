"""Public answers carry no server paths: sources and roots relative to the data root, errors in
one line (tracebacks go to the log)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from service.security import public_path, public_text

if TYPE_CHECKING:
    from conftest import AppFactory, World

pytestmark = pytest.mark.anyio


async def test_answers_show_paths_relative_to_the_data_root(
    world: World, tmp_path: Path, running_app: AppFactory
) -> None:
    index_dir = tmp_path / "index"  # jobs are created: not in the shared world's DB
    shutil.copytree(world.index_dir, index_dir)
    settings = world.settings(index_dir=index_dir, classifier_checkpoints=[])
    async with running_app(settings, run_jobs=False) as client:
        await _check_answers(client, world)


async def _check_answers(client: httpx.AsyncClient, world: World) -> None:
    server = str(world.root)  # every server folder of the test world lies under it
    files = {"image": ("q.jpg", world.sample.read_bytes(), "image/jpeg")}
    search = await client.post("/search", files=files, data={"k": 3})
    assert search.status_code == 200
    for hit in search.json()["hits"]:
        assert hit["source"] == "ucm-small", hit
    image = (await client.get(f"/images/{search.json()['hits'][0]['id']}")).json()
    assert image["source"] == "ucm-small"
    key = {"X-API-Key": world.api_key}
    job = await client.post("/index-jobs", json={"source": "ucm-small"}, headers=key)
    assert job.status_code == 202 and job.json()["source"] == "ucm-small"
    evaluation = await client.post(
        "/evaluations", json={"dataset": "folder", "root": "ucm-small"}, headers=key
    )
    assert evaluation.status_code == 202 and evaluation.json()["root"] == "ucm-small"
    for url in ("/index-jobs", "/evaluations"):
        assert server not in (await client.get(url)).text, url


def test_public_helpers(tmp_path: Path) -> None:
    root = tmp_path / "data"
    assert public_path(str(root / "a" / "b.zip"), root) == "a/b.zip"
    assert public_path("/elsewhere/secret/b.zip", root) == "b.zip"
    assert public_path("rel/x", root) == "rel/x"
    trace = (
        f"FileNotFoundError: no such file {root}/a/b.jpg\n"
        'Traceback (most recent call last):\n  File "/srv/x.py"'
    )
    assert public_text(trace, [root]) == "FileNotFoundError: no such file a/b.jpg"
