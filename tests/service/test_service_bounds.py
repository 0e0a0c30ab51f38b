"""Hostile inputs at the edges of the public API: ids past the column type, paths the OS refuses.

Each answer must be a 4xx with a reason, never a 500, on SQLite and on PostgreSQL alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from service.security import resolve_inside

if TYPE_CHECKING:
    from conftest import AppFactory, World

pytestmark = pytest.mark.anyio

# Past PostgreSQL's INTEGER (2**31) and past SQLite's 64-bit INTEGER (2**63).
HUGE_IDS = (2**31, 2**63)
ID_URLS = (
    "/images/{}", "/images/{}/thumbnail", "/images/{}/file", "/images/{}/similar",
    "/index-jobs/{}", "/evaluations/{}", "/evaluations/{}/pr-curve.png",
)  # fmt: skip
DELETE_URLS = ("/images/{}", "/index-jobs/{}", "/evaluations/{}")


async def test_ids_past_the_column_type_are_422_not_500(
    world: World, migrated_db: str, tmp_path: Path, running_app: AppFactory
) -> None:
    settings = world.settings(index_dir=tmp_path / "index", db_url=migrated_db)
    key = {"X-API-Key": world.api_key}
    async with running_app(settings) as client:
        for huge in HUGE_IDS:
            for url in ID_URLS:
                response = await client.get(url.format(huge))
                assert response.status_code == 422, (url, huge, response.text)
            for url in DELETE_URLS:
                response = await client.delete(url.format(huge), headers=key)
                assert response.status_code == 422, (url, huge, response.text)
        largest = 2**31 - 1  # the largest id a row can have is still a plain 404
        for url in ("/images/{}", "/index-jobs/{}", "/evaluations/{}"):
            response = await client.get(url.format(largest))
            assert response.status_code == 404, (url, response.text)


def test_paths_the_os_refuses_are_4xx_with_a_reason(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "loop-a").symlink_to(root / "loop-b")
    (root / "loop-b").symlink_to(root / "loop-a")
    cases = {
        "nul\x00byte": "NUL",
        "~nosuchuser-rsir/x": "home",
        "x" * 5000: "too long",
        "loop-a": "symlink loop",
        "loop-a/inner": "symlink loop",
    }
    for bad, reason in cases.items():
        with pytest.raises(Exception) as info:
            resolve_inside(bad, root)
        status = getattr(info.value, "status_code", None)
        assert status is not None and 400 <= status < 500, (bad[:20], info.value)
        assert reason in str(info.value), (bad[:20], info.value)


async def test_job_sources_the_os_refuses_are_4xx(client: httpx.AsyncClient, world: World) -> None:
    key = {"X-API-Key": world.api_key}
    loop = world.data_root / "loop-x"
    if not loop.is_symlink():
        loop.symlink_to(world.data_root / "loop-y")
        (world.data_root / "loop-y").symlink_to(loop)
    for bad in ("nul\x00byte", "~nosuchuser-rsir", "x" * 5000, "loop-x"):
        response = await client.post("/index-jobs", json={"source": bad}, headers=key)
        assert 400 <= response.status_code < 500, (bad[:20], response.text)
        assert response.json()["detail"], bad[:20]
        response = await client.post(
            "/evaluations", json={"dataset": "folder", "root": bad}, headers=key
        )
        assert 400 <= response.status_code < 500, (bad[:20], response.text)


async def test_an_index_job_of_the_whole_data_root_is_refused(
    client: httpx.AsyncClient, world: World
) -> None:
    key = {"X-API-Key": world.api_key}
    for source in ("", ".", "./", "ucm-small/.."):
        response = await client.post("/index-jobs", json={"source": source}, headers=key)
        assert response.status_code == 422, (source, response.text)
    listed = (await client.get("/index-jobs")).json()["items"]
    assert not [job for job in listed if job["source"] in ("", ".", str(world.data_root))]


async def test_a_negative_or_huge_seed_is_refused_before_queuing(
    client: httpx.AsyncClient, world: World
) -> None:
    key = {"X-API-Key": world.api_key}
    for seed in (-1, 2**32):
        response = await client.post(
            "/evaluations",
            json={"dataset": "folder", "root": "ucm-small", "seed": seed},
            headers=key,
        )
        assert response.status_code == 422, (seed, response.text)


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::", "worker.internal"])
def test_a_worker_without_a_key_refuses_to_listen_beyond_loopback(world: World, host: str) -> None:
    from service.worker import create_worker_app

    with pytest.raises(ValueError, match="RSIR_API_KEY"):
        create_worker_app(world.settings(api_key=None, worker_host=host))
    create_worker_app(world.settings(api_key=None, worker_host="127.0.0.1"))  # loopback: fine
    create_worker_app(world.settings(worker_host=host))  # with a key: fine


def test_the_index_lock_file_is_not_executable(tmp_path: Path) -> None:
    from indexer.db import make_engine, upgrade_db
    from indexer.store import IndexStore

    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade_db(url)
    engine = make_engine(url)
    with IndexStore.open(tmp_path / "index", engine, "fp", 8, writable=True):
        mode = (tmp_path / "index" / ".write.lock").stat().st_mode
    engine.dispose()
    assert mode & 0o111 == 0, oct(mode)
