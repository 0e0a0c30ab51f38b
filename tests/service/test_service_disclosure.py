"""Public answers carry no server paths: sources and roots relative to the data root, errors in
one line (tracebacks go to the log)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from service.security import public_path, public_problem, public_text

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
    index, ckpt = tmp_path / "srv" / "index", tmp_path / "srv" / "m" / "e.pt"
    problem = f"embedder {ckpt}: {ckpt} missing; index in {index} (in {index}/seg.faiss)\nTrace"
    assert public_problem(problem, root, [ckpt, index, root / "c" / "x.pt"]) == (
        "embedder e.pt: e.pt missing; index in index (in index/seg.faiss)"
    )


async def test_ready_and_health_name_models_and_the_index_without_server_paths(
    world: World, tmp_path: Path, running_app: AppFactory
) -> None:
    elsewhere = tmp_path / "srv" / "models"  # outside the data root: shown by its name
    elsewhere.mkdir(parents=True)
    (elsewhere / "broken.pt").write_bytes(b"not a checkpoint")
    inside = world.data_root / "models" / "missing.pt"  # inside: relative to the data root
    settings = world.settings(
        index_dir=tmp_path / "srv" / "index",
        checkpoint=elsewhere / "missing-embedder.pt",
        classifier_checkpoints=[elsewhere / "broken.pt", inside],
    )
    async with running_app(settings, run_jobs=False) as client:
        ready = await client.get("/ready")
        health = await client.get("/health")
        files = {"image": ("q.jpg", world.sample.read_bytes(), "image/jpeg")}
        search = await client.post("/search", files=files)
    assert ready.status_code == 503 and search.status_code == 503
    for answer in (ready.text, health.text, search.text):
        assert str(tmp_path) not in answer and str(world.root) not in answer, answer
    detail = ready.json()["detail"]
    assert "missing-embedder.pt" in detail and "broken.pt" in detail, detail
    assert "models/missing.pt" in detail, detail


async def test_a_model_mismatch_names_the_index_without_its_server_path(
    world: World, tmp_path: Path, running_app: AppFactory, other_checkpoint: Path
) -> None:
    index_dir = tmp_path / "srv" / "index"
    shutil.copytree(world.index_dir, index_dir)
    settings = world.settings(
        index_dir=index_dir, checkpoint=other_checkpoint, classifier_checkpoints=[]
    )
    async with running_app(settings, run_jobs=False) as client:
        ready = await client.get("/ready")
        files = {"image": ("q.jpg", world.sample.read_bytes(), "image/jpeg")}
        search = await client.post("/search", files=files)
    assert ready.status_code == 503 and "was made by model" in ready.json()["detail"]
    assert search.status_code in (409, 503)
    for answer in (ready.text, search.text):
        assert str(tmp_path) not in answer and str(world.root) not in answer, answer


async def test_a_delete_during_an_index_run_is_409_without_the_index_path(
    world: World, tmp_path: Path, running_app: AppFactory
) -> None:
    from indexer.db import make_engine
    from indexer.store import IndexStore

    index_dir = tmp_path / "srv" / "index"
    shutil.copytree(world.index_dir, index_dir)
    settings = world.settings(index_dir=index_dir, classifier_checkpoints=[])
    engine = make_engine(settings.resolved_db_url())
    key = {"X-API-Key": world.api_key}
    try:
        async with running_app(settings, run_jobs=False) as client:
            with IndexStore.open(index_dir, engine, writable=True):  # an index run holds it
                response = await client.delete("/images/1", headers=key)
    finally:
        engine.dispose()
    assert response.status_code == 409 and "retry when it ends" in response.text
    assert str(tmp_path) not in response.text, response.text


async def test_an_unreadable_scene_is_refused_without_its_server_path(
    world: World, tmp_path: Path, running_app: AppFactory
) -> None:
    from indexer.options import IndexOptions
    from indexer.pipeline import index_source
    from tests.service.test_service_geo import geotiff_dir

    scene = tmp_path / "srv" / "scenes" / "cogeo.tif"
    scene.parent.mkdir(parents=True)
    shutil.copyfile(geotiff_dir(world) / "cogeo.tif", scene)
    index_dir = tmp_path / "srv" / "index"
    index_source(
        scene, world.checkpoint, IndexOptions(index_dir=index_dir, num_workers=0, device="cpu")
    )
    scene.write_bytes(b"no longer a GeoTIFF")  # the file went bad after indexing
    settings = world.settings(index_dir=index_dir, classifier_checkpoints=[])
    async with running_app(settings, run_jobs=False) as client:
        scenes = (await client.get("/scenes")).json()["scenes"]
        response = await client.get(scenes[0]["overview_url"])
        place = await client.post(
            "/search", data={"scene_id": scenes[0]["id"], "window": "0,0,64,64"}
        )
    assert response.status_code in (410, 422) and "cogeo.tif" in response.text, response.text
    assert place.status_code == 422 and "cogeo.tif" in place.text, place.text
    for answer in (response.text, place.text):
        assert str(tmp_path) not in answer, answer
