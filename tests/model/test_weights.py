"""`rsir weights fetch` against a real HTTP server on 127.0.0.1 (never the internet)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from model.backbones import create_trunk, default_backbone, torch_cache_file
from model.weights import WeightsFetchError, expected_hash, fetch_weights
from rsir.cli import app


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A folder served over HTTP on 127.0.0.1 (base URL, folder)."""
    folder = tmp_path / "www"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", folder
    finally:
        server.shutdown()


def _resnet_file(folder: Path, name: str) -> tuple[Path, str]:
    from torchvision import models

    net = getattr(models, name)(weights=None)
    path = folder / f"{name}.pth"
    torch.save(net.state_dict(), path)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_hash_comes_from_torchvisions_file_name() -> None:
    url = "https://download.pytorch.org/models/resnet50-0676ba61.pth"
    assert expected_hash(url) == "0676ba61"


def test_fetch_verifies_and_makes_resnet50_the_default(
    served: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, folder = served
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert default_backbone() == "efficientnet_lite0"
    path, digest = _resnet_file(folder, "resnet50")
    result = CliRunner().invoke(
        app,
        ["weights", "fetch", "resnet50", "--url", f"{base}/{path.name}", "--sha256", digest],
    )
    assert result.exit_code == 0, result.output
    saved = torch_cache_file("https://download.pytorch.org/models/resnet50-0676ba61.pth")
    assert saved.is_file() and saved.read_bytes() == path.read_bytes()
    assert default_backbone() == "resnet50"
    _, init = create_trunk("resnet50")
    assert init == f"imagenet:{saved.name}"


def test_fetch_refuses_a_file_whose_hash_differs(
    served: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, folder = served
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    path, _ = _resnet_file(folder, "resnet18")
    with pytest.raises(WeightsFetchError, match="SHA-256"):
        fetch_weights("resnet18", url=f"{base}/{path.name}", progress=False)  # official hash
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    assert not any(checkpoints.glob("*.pth"))
    assert default_backbone() == "efficientnet_lite0"


def test_fetch_reports_an_unreachable_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    result = CliRunner().invoke(
        app, ["weights", "fetch", "resnet18", "--url", "http://127.0.0.1:9/none.pth"]
    )
    assert result.exit_code == 1
    assert "could not download" in result.output


def test_lite_weights_need_no_fetch() -> None:
    with pytest.raises(WeightsFetchError, match="come with rsir"):
        fetch_weights("efficientnet_lite0")
