"""The public HTTP API, in-process (ASGI transport), against a real index of real UCM images."""

from __future__ import annotations

import asyncio
import base64
import io
import re
from typing import TYPE_CHECKING

import httpx
import pytest
from PIL import Image

if TYPE_CHECKING:
    from conftest import World

pytestmark = pytest.mark.anyio


def key(world: World) -> dict[str, str]:
    return {"X-API-Key": world.api_key}


def upload(data: bytes, name: str = "query.jpg", mime: str = "image/jpeg") -> dict[str, object]:
    return {"image": (name, data, mime)}


async def test_health_ready_and_openapi(client: httpx.AsyncClient, world: World) -> None:
    assert (await client.get("/health")).json() == {"status": "ok"}
    ready = await client.get("/ready")
    assert ready.status_code == 200, ready.text
    worker = ready.json()["components"]["worker"]
    assert worker["index"]["ntotal"] == len(world.classes) * world.per_class
    assert worker["embedder"] == world.fingerprint
    paths = set((await client.get("/openapi.json")).json()["paths"])
    for path in (
        "/search", "/explain", "/classify", "/models", "/images/{image_id}",
        "/images/{image_id}/similar", "/images/{image_id}/thumbnail", "/images/{image_id}/file",
        "/evaluations", "/evaluations/{job_id}", "/evaluations/{job_id}/pr-curve.png",
        "/index-jobs", "/index-jobs/{job_id}", "/health", "/ready", "/metrics",
    ):  # fmt: skip
        assert path in paths, path


async def test_search_finds_the_query_first(client: httpx.AsyncClient, world: World) -> None:
    response = await client.post("/search", files=upload(world.sample.read_bytes()), data={"k": 5})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"hits", "k", "model_fingerprint", "took_ms"}
    assert body["k"] == 5 and len(body["hits"]) == 5
    assert body["model_fingerprint"] == world.fingerprint
    first = body["hits"][0]
    assert set(first) == {
        "id", "score", "label", "source", "path", "thumbnail_url", "file_url",
        "scene_id", "window", "crs", "footprint", "bbox",  # None: plain images have no place
    }  # fmt: skip
    assert first["path"] == f"{world.classes[0]}/{world.sample.name}"
    assert first["score"] > 0.99 and first["label"] == world.classes[0]
    scores = [hit["score"] for hit in body["hits"]]
    assert scores == sorted(scores, reverse=True)
    thumb = await client.get(first["thumbnail_url"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) <= 128
    original = await client.get(first["file_url"])
    assert original.content == world.sample.read_bytes()
    assert original.headers["content-type"] == "image/jpeg"


async def test_search_label_filter(client: httpx.AsyncClient, world: World) -> None:
    response = await client.post(
        "/search", files=upload(world.sample.read_bytes()), data={"k": 50, "label": "beach"}
    )
    hits = response.json()["hits"]
    assert len(hits) == world.per_class and {h["label"] for h in hits} == {"beach"}


async def test_similar_and_image_metadata(client: httpx.AsyncClient, world: World) -> None:
    info = await client.get("/images/1")
    assert info.status_code == 200
    row = info.json()
    assert row["model_fingerprint"] == world.fingerprint and row["width"] == 256
    similar = await client.get(row["similar_url"], params={"k": 3})
    assert similar.status_code == 200
    ids = [hit["id"] for hit in similar.json()["hits"]]
    assert len(ids) == 3 and 1 not in ids


async def test_explain_is_a_heat_map_png(client: httpx.AsyncClient, world: World) -> None:
    response = await client.post("/explain", files=upload(world.sample.read_bytes()))
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    heat = Image.open(io.BytesIO(response.content))
    assert heat.size == Image.open(world.sample).size and heat.mode == "RGB"


async def test_models_and_classify(client: httpx.AsyncClient, world: World) -> None:
    models = (await client.get("/models")).json()["models"]
    kinds = {m["name"]: m["kind"] for m in models}
    assert kinds == {
        "embedder-r18": "embedder",
        "plain-test": "classifier",
        "pcl-test": "classifier",
    }
    for model in models:
        assert (
            model["classes"] == list(world.classes)
            and model["init"] == "random"
            and model["fingerprint"]
        )
    response = await client.post(
        "/classify",
        files=upload(world.sample.read_bytes()),
        data={"model": "plain-test", "top_k": 4},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "plain-test" and body["explanation_png_base64"] is None
    assert sorted(p["label"] for p in body["predictions"]) == sorted(world.classes)
    assert sum(p["probability"] for p in body["predictions"]) == pytest.approx(1.0, abs=1e-5)
    explained = await client.post(
        "/classify",
        files=upload(world.sample.read_bytes()),
        data={"model": "pcl-test", "top_k": 2, "explain": "true"},
    )
    body = explained.json()
    assert len(body["predictions"]) == 2
    png = base64.b64decode(body["explanation_png_base64"])
    assert Image.open(io.BytesIO(png)).format == "PNG"


async def test_concurrent_queries_share_forward_passes(
    client: httpx.AsyncClient, world: World
) -> None:
    before = _metric(await client.get("/metrics"), 'rsir_batch_size_count{batcher="search"}')
    data = world.sample.read_bytes()
    responses = await asyncio.gather(
        *(client.post("/search", files=upload(data), data={"k": 3}) for _ in range(12))
    )
    assert all(r.status_code == 200 and r.json()["hits"][0]["score"] > 0.99 for r in responses)
    after = _metric(await client.get("/metrics"), 'rsir_batch_size_count{batcher="search"}')
    batches = after - before
    assert 1 <= batches < 12, f"12 concurrent queries ran as {batches} forward passes"


async def test_metrics_exposition(client: httpx.AsyncClient, world: World) -> None:
    await client.get("/health")
    text = (await client.get("/metrics")).text
    assert (
        _metric_text(text, 'rsir_http_requests_total{method="GET",route="/health",status="200"}')
        >= 1
    )
    assert _metric_text(text, "rsir_index_size") == len(world.classes) * world.per_class
    assert 'rsir_queue_depth{batcher="search"}' in text
    assert (
        'rsir_http_request_duration_seconds_bucket{le="0.005",method="GET",route="/health"}' in text
    )
    assert 'rsir_jobs{status="queued"}' in text


def _metric(response: httpx.Response, name: str) -> float:
    return _metric_text(response.text, name)


def _metric_text(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.MULTILINE)
    assert match, f"{name} not in metrics"
    return float(match.group(1))


# ---------------------------------------------------------------------- errors
async def test_non_image_is_415(client: httpx.AsyncClient) -> None:
    for data in (b"%PDF-1.4 not an image", b"<html>hello</html>", b""):
        response = await client.post("/search", files=upload(data, "evil.jpg", "image/jpeg"))
        assert response.status_code == 415, (data, response.text)
        assert "not an image" in response.json()["detail"] or "empty" in response.json()["detail"]


async def test_corrupt_image_is_422(client: httpx.AsyncClient, world: World) -> None:
    data = world.sample.read_bytes()
    for truncated in (data[:200], data[: len(data) // 2]):  # in the header, in the pixels
        response = await client.post("/search", files=upload(truncated))
        assert response.status_code == 422, response.text
        assert response.json()["detail"].startswith("cannot")


async def test_pixel_bomb_is_413(client: httpx.AsyncClient) -> None:
    buffer = io.BytesIO()
    Image.new("1", (12_000, 12_000)).save(buffer, format="PNG")  # 144 Mpx in a few KiB
    assert len(buffer.getvalue()) < 200_000
    for route in ("/search", "/explain", "/classify"):
        response = await client.post(
            route, files=upload(buffer.getvalue(), "bomb.png", "image/png")
        )
        assert response.status_code == 413, response.text
        assert "pixels" in response.json()["detail"]


async def test_unknown_ids_and_models_are_404(client: httpx.AsyncClient, world: World) -> None:
    for url in (
        "/images/99999", "/images/99999/thumbnail", "/images/99999/file",
        "/images/99999/similar", "/evaluations/99999", "/evaluations/99999/pr-curve.png",
        "/index-jobs/99999",
    ):  # fmt: skip
        response = await client.get(url)
        assert response.status_code == 404, url
        assert "99999" in response.json()["detail"]
    response = await client.post(
        "/classify", files=upload(world.sample.read_bytes()), data={"model": "no-such-model"}
    )
    assert response.status_code == 404 and "plain-test" in response.json()["detail"]
    response = await client.post(
        "/evaluations",
        json={"dataset": "folder", "root": "ucm-small", "model": "nope"},
        headers=key(world),
    )
    assert response.status_code == 404 and "embedder-r18" in response.json()["detail"]


async def test_write_endpoints_need_the_key(client: httpx.AsyncClient) -> None:
    calls = [
        ("POST", "/evaluations", {"dataset": "folder", "root": "ucm-small"}),
        ("POST", "/index-jobs", {"source": "ucm-small"}),
        ("DELETE", "/evaluations/1", None),
        ("DELETE", "/index-jobs/1", None),
        ("DELETE", "/images/1", None),
    ]
    for method, url, body in calls:
        missing = await client.request(method, url, json=body)
        assert missing.status_code == 401, (url, missing.text)
        wrong = await client.request(
            method, url, json=body, headers={"X-API-Key": "wrong-key-123456"}
        )
        assert wrong.status_code == 403, (url, wrong.text)
        assert "detail" in wrong.json()
    assert (await client.get("/images/1")).status_code == 200  # nothing was deleted


async def test_paths_outside_the_data_root_are_403(client: httpx.AsyncClient, world: World) -> None:
    outside = world.root / "outside"
    outside.mkdir(exist_ok=True)
    link = world.data_root / "sneaky-link"
    if not link.exists():
        link.symlink_to(outside, target_is_directory=True)
    for source in ("/etc", "../models", str(world.checkpoint.parent), "sneaky-link",
                   "ucm-small/../../models", "http://example.com/x.zip"):  # fmt: skip
        response = await client.post("/index-jobs", json={"source": source}, headers=key(world))
        assert response.status_code == 403, (source, response.text)
        response = await client.post(
            "/evaluations", json={"dataset": "folder", "root": source}, headers=key(world)
        )
        assert response.status_code == 403, (source, response.text)
    missing = await client.post(
        "/index-jobs", json={"source": "no-such-folder"}, headers=key(world)
    )
    assert missing.status_code == 404


async def test_validation_errors_are_422(client: httpx.AsyncClient, world: World) -> None:
    response = await client.post("/search", files=upload(world.sample.read_bytes()), data={"k": 0})
    assert response.status_code == 422
    response = await client.post("/search", data={"k": 3})
    assert response.status_code == 422
    response = await client.post("/evaluations", json={"dataset": "imagenet"}, headers=key(world))
    assert response.status_code == 422
