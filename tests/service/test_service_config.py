"""Start-up configurations: missing checkpoint, another model's index, keys, unknown paths."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

from model.checkpoint import embedder_checkpoint, save_checkpoint
from model.embedder import EmbedderConfig, build_embedder
from model.transforms import Preprocessing
from service.app import create_app
from service.routes.images import content_disposition
from service.security import resolve_inside
from tests.helpers import running_app

if TYPE_CHECKING:
    from conftest import World


@pytest.mark.anyio
async def test_without_a_checkpoint_the_api_is_alive_but_not_ready(
    world: World, tmp_path: Path
) -> None:
    settings = world.settings(index_dir=tmp_path / "index", checkpoint=None)
    async with running_app(settings) as client:
        assert (await client.get("/health")).status_code == 200
        ready = await client.get("/ready")
        assert ready.status_code == 503 and "RSIR_CHECKPOINT" in ready.json()["detail"]
        files = {"image": ("q.jpg", world.sample.read_bytes(), "image/jpeg")}
        search = await client.post("/search", files=files)
        assert search.status_code == 503 and "no embedder" in search.json()["detail"]
        assert (await client.post("/explain", files=files)).status_code == 503
        models = (await client.get("/models")).json()["models"]
        assert {m["kind"] for m in models} == {"classifier"}


@pytest.mark.anyio
async def test_the_checkpoint_recorded_by_the_index_is_the_default(
    world: World, tmp_path: Path
) -> None:
    index_dir = tmp_path / "index"
    shutil.copytree(world.index_dir, index_dir)
    settings = world.settings(index_dir=index_dir, checkpoint=None, classifier_checkpoints=[])
    async with running_app(settings) as client:
        ready = await client.get("/ready")
        assert ready.status_code == 200
        assert ready.json()["components"]["worker"]["embedder"] == world.fingerprint


@pytest.mark.anyio
async def test_an_index_of_another_model_is_refused(world: World, tmp_path: Path) -> None:
    torch.manual_seed(7)
    net, init = build_embedder(EmbedderConfig(backbone="resnet18"), pretrained=False)
    other = tmp_path / "other.pt"
    other_fp = save_checkpoint(
        embedder_checkpoint(net, Preprocessing(image_size=64), list(world.classes), init, "x"),
        other,
    )
    settings = world.settings(checkpoint=other, classifier_checkpoints=[])
    async with running_app(settings) as client:
        ready = await client.get("/ready")
        assert ready.status_code == 503
        files = {"image": ("q.jpg", world.sample.read_bytes(), "image/jpeg")}
        search = await client.post("/search", files=files)
        assert search.status_code == 409
        detail = search.json()["detail"]
        assert world.fingerprint in detail and other_fp in detail


@pytest.mark.anyio
async def test_without_a_configured_key_writes_are_disabled(world: World) -> None:
    settings = world.settings(api_key=None, classifier_checkpoints=[])
    async with running_app(settings) as client:
        response = await client.post(
            "/index-jobs", json={"source": "ucm-small"}, headers={"X-API-Key": "anything-at-all"}
        )
        assert response.status_code == 403 and "RSIR_API_KEY" in response.json()["detail"]


@pytest.mark.parametrize("key", ["changeme", "secret", "short"])
def test_placeholder_keys_are_refused_at_start(world: World, key: str) -> None:
    with pytest.raises(ValueError, match="RSIR_API_KEY"):
        create_app(world.settings(api_key=key))


def test_resolve_inside_follows_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "inside").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "escape").symlink_to(outside)
    (root / "alias").symlink_to(root / "inside")
    assert resolve_inside("inside", root) == (root / "inside").resolve()
    assert resolve_inside(str(root / "alias"), root) == (root / "inside").resolve()
    for bad in ("escape", "../outside", str(outside), "inside/../../outside", "file:///etc"):
        with pytest.raises(Exception) as info:
            resolve_inside(bad, root)
        assert getattr(info.value, "status_code", None) == 403, bad


def test_content_disposition_survives_any_file_name() -> None:
    header = content_disposition('tiles/東京 "x"\r\n.jpg')
    header.encode("latin-1")  # a header must encode; this one is pure ASCII
    assert header.startswith('inline; filename="')
    assert "filename*=UTF-8''%E6%9D%B1%E4%BA%AC%20%22x%22%0D%0A.jpg" in header
