"""Start-up failures are retried with backoff, and /health and /ready say what is going on."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from indexer.db import upgrade_db

if TYPE_CHECKING:
    from conftest import AppFactory, World

pytestmark = pytest.mark.anyio


async def _until(client: httpx.AsyncClient, url: str, ok: Any, timeout: float = 60.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        body = (await client.get(url)).json()
        if ok(body) or loop.time() > deadline:
            return body
        await asyncio.sleep(0.3)


async def test_a_db_behind_at_start_is_retried_and_the_job_loop_then_runs(
    world: World, db_url: str, tmp_path: Path, running_app: AppFactory
) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite is migrated at start; a server DB is only checked")
    settings = world.settings(
        index_dir=tmp_path / "index", db_url=db_url, classifier_checkpoints=[]
    )
    async with running_app(settings) as client:
        health = (await client.get("/health")).json()
        assert health["status"] == "degraded", health
        assert any("rsir db upgrade" in p for p in health["problems"]), health
        ready = await client.get("/ready")
        assert ready.status_code == 503 and "rsir db upgrade" in ready.json()["detail"]

        upgrade_db(db_url)  # the operator runs `rsir db upgrade` while the app is up
        health = await _until(
            client, "/health", lambda b: not any("DB" in p for p in b.get("problems", []))
        )
        assert not any("DB" in p for p in health.get("problems", [])), health
        key = {"X-API-Key": world.api_key}
        created = await client.post("/index-jobs", json={"source": "ucm-small"}, headers=key)
        assert created.status_code == 202, created.text
        job = await _until(
            client, created.json()["url"], lambda b: b["status"] in ("done", "failed")
        )
        assert job["status"] == "done", job  # the job loop started once the DB was right
        ready = await _until(client, "/ready", lambda b: b.get("status") == "ready")
        assert ready.get("status") == "ready", ready  # and the index, missing at start, loaded
        assert (await client.get("/health")).json() == {"status": "ok"}


def test_an_index_retried_in_vain_is_one_problem_until_it_loads(
    world: World, tmp_path: Path
) -> None:
    """Each failed retry of the index replaces its problem rather than adding one more, so
    /health and /ready do not list the same reason once per backoff step."""
    from indexer.db import make_engine
    from service.metrics import Metrics
    from service.search_engine import SearchEngine

    url = f"sqlite:///{tmp_path / 'not-yet-migrated.db'}"
    settings = world.settings(index_dir=tmp_path / "index", db_url=url, classifier_checkpoints=[])
    engine = make_engine(url)
    search = SearchEngine(settings, engine, Metrics())
    search.load()
    try:
        assert search.store is None and search.index_retryable
        first = search.problems
        assert len(first) == 1 and first[0].startswith("index in"), first
        assert not search.refresh_index() and not search.refresh_index()
        assert search.problems == first
        upgrade_db(url)
        assert search.refresh_index() and search.store is not None and search.problems == []
    finally:
        search.close()
        engine.dispose()
