"""Real processes: `rsir serve` under uvicorn on a free port, and `rsir worker` killed mid-job.

The worker test runs the split deployment: the API (in this process) forwards queries to a
worker process over its internal HTTP API, and the worker claims jobs from the shared DB. The
worker is SIGKILLed while it evaluates; the job must end done on a new worker (attempt 2).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pytest

from tests.helpers import free_port, running_app

if TYPE_CHECKING:
    from conftest import World

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("RSIR_TEST_DATA", REPO.parent / "shared" / "data")).resolve()


def env_for(settings: Any) -> dict[str, str]:
    """RSIR_* variables that reproduce `settings` in a child process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RSIR_")}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if isinstance(value, list):
            env[f"RSIR_{name.upper()}"] = json.dumps([str(v) for v in value])
        else:
            env[f"RSIR_{name.upper()}"] = str(value)
    return env


@contextmanager
def process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A child `python -m service.cli ...`, killed at exit if still running."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", *args],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 90.0) -> None:
    """Until `url` answers 200, or fail with the child's log."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"process exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            response = httpx.get(url, timeout=2)
            if response.status_code == 200:
                return
            last = response.text
        except httpx.TransportError as exc:
            last = str(exc)
        time.sleep(0.2)
    pytest.fail(f"{url} not ready after {timeout} s ({last}):\n{log.read_text()[-4000:]}")


def test_serve_command_runs_uvicorn_on_a_free_port(world: World, tmp_path: Path) -> None:
    index_dir = tmp_path / "index"
    shutil.copytree(world.index_dir, index_dir)
    settings = world.settings(index_dir=index_dir)
    port = free_port()
    log = tmp_path / "serve.log"
    args = ["serve", "--host", "127.0.0.1", "--port", str(port), "--index-dir", str(index_dir),
            "--checkpoint", str(world.checkpoint)]  # fmt: skip
    with process(args, env_for(settings), log) as proc:
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/ready", proc, log)
        with httpx.Client(base_url=base, timeout=30) as http:
            files = {"image": ("q.jpg", world.sample.read_bytes(), "image/jpeg")}
            hits = http.post("/search", files=files, data={"k": 3}).json()["hits"]
            assert hits[0]["path"].endswith(world.sample.name) and hits[0]["score"] > 0.99
            thumb = http.get(hits[1]["thumbnail_url"])
            assert thumb.status_code == 200 and thumb.content[:3] == b"\xff\xd8\xff"
            metrics = http.get("/metrics").text
            assert 'rsir_http_requests_total{method="POST",route="/search",status="200"} 1.0' in (
                metrics
            )
            assert "rsir_index_size 24.0" in metrics
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal at exit
    text = log.read_text()
    assert "Application shutdown complete" in text  # lifespan ran its cleanup
    assert f"http://127.0.0.1:{port}/" in text  # the URL is printed


async def poll(client: httpx.AsyncClient, url: str, until: Any, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while time.monotonic() < deadline:
        body: dict[str, Any] = (await client.get(url)).json()
        seen.append(f"{body['status']}/{body['progress']}")
        if until(body):
            return body
        await anyio.sleep(0.1)
    raise AssertionError(f"{url}: condition not met in {timeout} s; states: {seen[-20:]}")


@pytest.mark.anyio
async def test_job_survives_a_killed_worker(world: World, tmp_path: Path) -> None:
    if not (SHARED_DATA / "UCMerced_LandUse" / "Images").is_dir():
        pytest.skip("real UCM images not found")
    index_dir = tmp_path / "index"
    shutil.copytree(world.index_dir, index_dir)
    port = free_port()
    settings = world.settings(
        index_dir=index_dir,
        data_root=SHARED_DATA,
        worker_port=port,
        worker_url=f"http://127.0.0.1:{port}",
        job_lease_seconds=1.5,
        job_max_attempts=2,
    )
    worker_env = env_for(settings.model_copy(update={"worker_url": None}))
    key = {"X-API-Key": world.api_key}
    log = tmp_path / "worker.log"
    async with running_app(settings, poll_seconds=0.2, base_url="http://api") as api:
        # No worker yet: the API is up but not ready, and queries say why.
        down = await api.get("/ready")
        assert down.status_code == 503 and "unreachable" in down.json()["detail"]
        files = {"image": ("q.jpg", world.sample.read_bytes(), "image/jpeg")}
        assert (await api.post("/search", files=files)).status_code == 503
        # Jobs can be queued while no worker runs.
        created = await api.post(
            "/evaluations", json={"dataset": "ucm", "per_class": 12, "seed": 1}, headers=key
        )
        assert created.status_code == 202, created.text
        url = created.json()["url"]

        with process(["worker"], worker_env, log) as first:
            running = await poll(
                api, url, lambda b: b["status"] == "running" and b["progress"] > 0, 120
            )
            assert running["attempts"] == 1
            first.send_signal(signal.SIGKILL)  # mid-job: no chance to release the job
            first.wait(10)

        # The dead worker's lease expires; the API, reading the job, puts it back in the queue.
        requeued = await poll(api, url, lambda b: b["status"] != "running", 30)
        assert requeued["status"] == "queued", requeued
        assert "stopped heartbeating" in requeued["error"] and "retrying" in requeued["error"]

        with process(["worker"], worker_env, log) as second:
            wait_http(f"http://127.0.0.1:{port}/ready", second, log)
            # Queries now go through the worker process.
            response = await api.post("/search", files=files, data={"k": 2})
            assert response.status_code == 200, response.text
            assert response.json()["hits"][0]["score"] > 0.99
            assert response.json()["hits"][0]["footprint"] is None  # plain images: no place
            # The area filter crosses to the worker: no indexed tile lies in this box.
            area = await api.post("/search", files=files, data={"k": 2, "bbox": "0,0,1,1"})
            assert area.status_code == 200 and area.json()["hits"] == [], area.text
            assert (await api.get("/ready")).status_code == 200
            names = {m["name"] for m in (await api.get("/models")).json()["models"]}
            assert names == {"embedder-r18", "plain-test", "pcl-test"}
            classified = await api.post("/classify", files=files, data={"model": "nope"})
            assert classified.status_code == 404 and "plain-test" in classified.text
            heat = await api.post("/explain", files=files)
            assert heat.status_code == 200 and heat.content.startswith(b"\x89PNG")

            done = await poll(api, url, lambda b: b["status"] in ("done", "failed"), 150)
            assert done["status"] == "done", done
            assert done["attempts"] == 2 and 0.0 <= done["results"]["map"] <= 1.0
            assert done["results"]["n_queries"] + done["results"]["n_gallery"] == 21 * 12
            png = await api.get(done["pr_curve_url"])
            assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
            # A delete goes to the worker, which owns the index in this deployment.
            assert (await api.delete("/images/24", headers=key)).status_code == 204
            ready = (await api.get("/ready")).json()
            assert ready["components"]["worker"]["index"]["ntotal"] == 23
            second.send_signal(signal.SIGTERM)
            assert second.wait(30) in (0, -signal.SIGTERM)
