"""Relevance feedback over HTTP (POST/GET /search, GET /images/{id}/similar), on a real index of
real UCM images made by a small trained embedder, with a real SQLite DB.

The index is the CLI's (tests/indexer/test_feedback.py) kind: 4 classes x 10 images.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from indexer.options import IndexOptions
from indexer.pipeline import index_source
from tests.conftest import ucm_files
from tests.helpers import running_app

if TYPE_CHECKING:
    from conftest import World

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
K = 10
QUERIES = (("beach", 0), ("beach", 1), ("harbor", 0), ("harbor", 1))


@pytest.fixture(scope="module")
async def trained_client(
    world: World,
    small_folder: Path,
    trained_checkpoint: Path,
    tmp_path_factory: pytest.TempPathFactory,
    anyio_backend: str,
) -> AsyncIterator[httpx.AsyncClient]:
    index_dir = tmp_path_factory.mktemp("feedback-service-index")
    summary = index_source(
        small_folder,
        trained_checkpoint,
        IndexOptions(index_dir=index_dir, batch_size=16, num_workers=0, device="cpu"),
    )
    assert summary.added == 40
    settings = world.settings(
        index_dir=index_dir,
        checkpoint=trained_checkpoint,
        classifier_checkpoints=[],
        data_root=small_folder.parent,
    )
    key = {"X-API-Key": world.api_key}
    async with running_app(settings, poll_seconds=0.2, headers=key) as http:
        yield http


def marks(hits: list[dict], cls: str) -> dict[str, str]:
    """Same-class hits relevant, the others not relevant (what a user would click)."""
    return {
        "relevant": ",".join(str(h["id"]) for h in hits if h["label"] == cls),
        "not_relevant": ",".join(str(h["id"]) for h in hits if h["label"] != cls),
    }


def same(hits: list[dict], cls: str) -> int:
    return sum(h["label"] == cls for h in hits)


async def test_post_search_feedback_raises_same_class_hits(
    trained_client: httpx.AsyncClient, small_folder: Path
) -> None:
    before = after = 0
    for cls, n in QUERIES:
        data = (small_folder / cls / ucm_files(cls, n + 1)[n].name).read_bytes()
        files = {"image": ("q.jpg", data, "image/jpeg")}
        first = await trained_client.post("/search", files=files, data={"k": K})
        assert first.status_code == 200, first.text
        hits = first.json()["hits"]
        assert 2 <= same(hits, cls) < K
        moved = await trained_client.post("/search", files=files, data={"k": K, **marks(hits, cls)})
        assert moved.status_code == 200, moved.text
        before += same(hits, cls)
        after += same(moved.json()["hits"], cls)
    assert after > before, (before, after)


async def test_similar_feedback_raises_same_class_hits(trained_client: httpx.AsyncClient) -> None:
    before = after = 0
    for cls, n in QUERIES:
        data = ucm_files(cls, n + 1)[n].read_bytes()
        own = await trained_client.post("/search", files={"image": ("q.jpg", data, "image/jpeg")})
        image_id = own.json()["hits"][0]["id"]  # the indexed copy of the query image
        first = await trained_client.get(f"/images/{image_id}/similar", params={"k": K})
        assert first.status_code == 200, first.text
        hits = first.json()["hits"]
        url = f"/images/{image_id}/similar"
        moved = await trained_client.get(url, params={"k": K, **marks(hits, cls)})
        assert moved.status_code == 200, moved.text
        assert image_id not in [h["id"] for h in moved.json()["hits"]]
        before += same(hits, cls)
        after += same(moved.json()["hits"], cls)
    assert after > before, (before, after)


async def test_feedback_ids_are_checked(trained_client: httpx.AsyncClient) -> None:
    data = ucm_files("beach", 1)[0].read_bytes()
    files = {"image": ("q.jpg", data, "image/jpeg")}
    unknown = await trained_client.post("/search", files=files, data={"relevant": "1,99999"})
    assert unknown.status_code == 404 and "99999" in unknown.json()["detail"]
    similar = await trained_client.get("/images/1/similar", params={"not_relevant": "99999"})
    assert similar.status_code == 404 and "99999" in similar.json()["detail"]
    malformed = await trained_client.post("/search", files=files, data={"relevant": "2,x"})
    assert malformed.status_code == 422 and "'x' is not an image id" in malformed.json()["detail"]
    both = await trained_client.get("/images/1/similar", params={"relevant": 2, "not_relevant": 2})
    assert both.status_code == 422 and "both" in both.json()["detail"]


async def test_openapi_documents_feedback(trained_client: httpx.AsyncClient) -> None:
    paths = (await trained_client.get("/openapi.json")).json()
    spec = paths["paths"]
    similar = {p["name"] for p in spec["/images/{image_id}/similar"]["get"]["parameters"]}
    place = {p["name"] for p in spec["/search"]["get"]["parameters"]}
    assert {"relevant", "not_relevant"} <= similar and {"relevant", "not_relevant"} <= place
    body = spec["/search"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    ref = body["$ref"].rsplit("/", 1)[-1]
    form = paths["components"]["schemas"][ref]["properties"]
    assert "Rocchio" in form["relevant"]["description"] and "not_relevant" in form
