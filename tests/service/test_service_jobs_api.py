"""Jobs over HTTP (evaluation and index runs on the in-process worker) and the byte cap."""

from __future__ import annotations

import asyncio
import io
import shutil
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.helpers import running_app

if TYPE_CHECKING:
    from conftest import World

pytestmark = pytest.mark.anyio

UCM = Path(__file__).resolve().parents[3] / "shared" / "data" / "UCMerced_LandUse" / "Images"


async def wait_for(client: httpx.AsyncClient, url: str, timeout: float = 90.0) -> dict[str, Any]:
    """Poll a job until it is done or failed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        body: dict[str, Any] = (await client.get(url)).json()
        if body["status"] in ("done", "failed"):
            return body
        assert body["status"] in ("queued", "running") and 0.0 <= body["progress"] <= 100.0
        await asyncio.sleep(0.2)
    raise AssertionError(f"job {url} did not end in {timeout} s: {body}")


async def test_evaluation_job_end_to_end(client: httpx.AsyncClient, world: World) -> None:
    key = {"X-API-Key": world.api_key}
    created = await client.post(
        "/evaluations",
        json={"dataset": "folder", "root": "ucm-small", "protocol": "split", "seed": 3},
        headers=key,
    )
    assert created.status_code == 202, created.text
    job = created.json()
    assert created.headers["location"] == job["url"] == f"/evaluations/{job['id']}"
    assert job["status"] in ("queued", "running") and job["pr_curve_url"] is None
    done = await wait_for(client, job["url"])
    assert done["status"] == "done", done["error"]
    assert done["progress"] == 100.0 and done["attempts"] == 1 and done["finished_at"]
    results = done["results"]
    assert 0.0 <= results["map"] <= 1.0
    assert set(results["per_class_ap"]) == set(world.classes)
    assert {"map_at_k", "precision_at_k"} <= set(results)
    png = await client.get(done["pr_curve_url"])
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    listed = (await client.get("/evaluations")).json()["items"]
    assert job["id"] in [item["id"] for item in listed]
    item = next(i for i in listed if i["id"] == job["id"])
    assert item["model"] == "embedder-r18"  # the served embedder, named when none was asked for
    for field in ("id", "status", "progress", "dataset", "protocol", "model", "created_at",
                  "finished_at", "results", "error", "pr_curve_url"):  # fmt: skip
        assert field in item
    assert (await client.delete(job["url"], headers=key)).status_code == 204
    assert (await client.get(job["url"])).status_code == 404


async def test_failing_job_reports_why(client: httpx.AsyncClient, world: World) -> None:
    key = {"X-API-Key": world.api_key}
    empty = world.data_root / "empty-classes" / "nothing"
    empty.mkdir(parents=True, exist_ok=True)
    (empty / "notes.txt").write_text("no images here")
    refused = await client.post(
        "/evaluations", json={"dataset": "folder", "root": "empty-classes"}, headers=key
    )
    assert refused.status_code == 422 and "no folder images" in refused.json()["detail"]
    for name in ("alpha", "beta"):  # image names, text content: fails only when decoded
        folder = world.data_root / "broken" / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(3):
            (folder / f"{name}{i}.jpg").write_text("this is not a JPEG")
    created = await client.post(
        "/evaluations", json={"dataset": "folder", "root": "broken"}, headers=key
    )
    assert created.status_code == 202
    job = await wait_for(client, created.json()["url"])
    assert job["status"] == "failed" and job["results"] is None
    assert job["error"].startswith("ImageDecodeError: cannot decode image")


async def test_index_job_adds_images_and_the_server_sees_them(world: World, tmp_path: Path) -> None:
    data_root = tmp_path / "data"
    new = data_root / "more" / "river"
    new.mkdir(parents=True)
    for src in sorted((UCM / "river").glob("*.jpg"))[:2]:
        shutil.copyfile(src, new / src.name)
    index_dir = tmp_path / "index"
    shutil.copytree(world.index_dir, index_dir)
    settings = world.settings(index_dir=index_dir, data_root=data_root, classifier_checkpoints=[])
    key = {"X-API-Key": world.api_key}
    async with running_app(settings) as client:
        created = await client.post("/index-jobs", json={"source": "more"}, headers=key)
        assert created.status_code == 202, created.text
        job = await wait_for(client, created.json()["url"])
        assert job["status"] == "done", job["error"]
        assert (
            job["results"]["added"] == 2 and job["source"] == "more"
        )  # relative to the data root (issue 8, defect 18)
        ready = (await client.get("/ready")).json()
        assert ready["components"]["worker"]["index"]["ntotal"] == world.per_class * 4 + 2
        query = sorted(new.iterdir())[1]
        hits = (
            await client.post(
                "/search", files={"image": ("q.jpg", query.read_bytes(), "image/jpeg")}
            )
        ).json()["hits"]
        assert hits[0]["label"] == "river" and hits[0]["path"] == f"river/{query.name}"
        again = await client.post("/index-jobs", json={"source": "more"}, headers=key)
        rerun = await wait_for(client, again.json()["url"])
        assert rerun["results"]["added"] == 0 and rerun["results"]["skipped_existing"] == 2
        listed = (await client.get("/index-jobs")).json()["items"]
        assert [item["id"] for item in listed] == [again.json()["id"], created.json()["id"]]

        # Deleting an image takes it out of index and DB together.
        gone = hits[0]["id"]
        assert (await client.delete(f"/images/{gone}")).status_code == 401
        assert (await client.delete(f"/images/{gone}", headers=key)).status_code == 204
        assert (await client.get(f"/images/{gone}")).status_code == 404
        assert (await client.delete(f"/images/{gone}", headers=key)).status_code == 404
        ready = (await client.get("/ready")).json()
        assert ready["components"]["worker"]["index"]["ntotal"] == world.per_class * 4 + 1
        after = await client.post(
            "/search", files={"image": ("q.jpg", query.read_bytes(), "image/jpeg")}, data={"k": 50}
        )
        assert gone not in [hit["id"] for hit in after.json()["hits"]]

        # Archives: a .tar.gz is indexed, and its thumbnails and files are read back from it.
        archive = data_root / "river.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            for image in sorted(new.iterdir()):
                tar.add(image, arcname=f"river/{image.name}")
        made = await client.post("/index-jobs", json={"source": "river.tar.gz"}, headers=key)
        job = await wait_for(client, made.json()["url"])
        assert job["status"] == "done" and job["results"]["added"] == 2, job
        found = await client.post(
            "/search",
            files={"image": ("q.jpg", query.read_bytes(), "image/jpeg")},
            data={"k": 10, "label": "river"},
        )
        assert len(found.json()["hits"]) == 3  # one left in the folder, two in the archive
        from_tar = [h for h in found.json()["hits"] if h["source"] == archive.name]
        assert len(from_tar) == 2
        for hit in from_tar:
            original = (new / hit["path"].split("/")[-1]).read_bytes()
            assert (await client.get(hit["file_url"])).content == original
            assert (await client.get(hit["thumbnail_url"])).status_code == 200


def _noise_png(side: int) -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


async def test_oversize_uploads_are_413(world: World) -> None:
    settings = world.settings(max_upload_bytes=50_000, classifier_checkpoints=[])
    async with running_app(settings) as client:
        medium = _noise_png(150)  # ~68 kB: passes the body cap, caught while reading the file
        assert 50_000 < len(medium) < 50_000 + 64 * 1024
        response = await client.post("/search", files={"image": ("m.png", medium, "image/png")})
        assert response.status_code == 413 and "50000" in response.json()["detail"]
        big = _noise_png(400)  # ~480 kB: refused from Content-Length, before reading
        response = await client.post("/search", files={"image": ("b.png", big, "image/png")})
        assert response.status_code == 413 and "request body" in response.json()["detail"]

        boundary = "rsirboundary"
        body = (
            (
                f"--{boundary}\r\n"
                'Content-Disposition: form-data; name="image"; filename="b.png"\r\n'
                f"Content-Type: image/png\r\n\r\n"
            ).encode()
            + big
            + f"\r\n--{boundary}--\r\n".encode()
        )

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked upload
            for start in range(0, len(body), 16_384):
                yield body[start : start + 16_384]

        response = await client.post(
            "/search",
            content=chunks(),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        assert response.status_code == 413, response.text
        assert "request body" in response.json()["detail"]
        small = await client.post(
            "/search", files={"image": ("q.jpg", world.sample.read_bytes(), "image/jpeg")}
        )
        assert small.status_code == 200
