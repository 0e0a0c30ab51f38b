"""A real rsir service for the browser tests: a small embedder, a real index of real UCM images,
and the app factory under uvicorn on a free port of 127.0.0.1, settings from the environment.

Why a subprocess and not the ASGI transport: the browser must load the pages, scripts and
thumbnails over real HTTP, exactly as it does in production.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
REPO = Path(__file__).resolve().parents[2]
DATA_ROOT = Path(os.environ.get("RSIR_TEST_DATA_ROOT", REPO.parent / "shared" / "data"))
UCM_IMAGES = DATA_ROOT / "UCMerced_LandUse" / "Images"
PER_CLASS = 2
IMAGE_SIZE = 64
API_KEY = "browser-test-key-0123456789"


@dataclass(frozen=True)
class LiveService:
    """A running service and what it indexed."""

    url: str
    archive: Path  # the indexed copy of the images: <class>/<file>
    api_key: str
    log: Path


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def copy_subset(dest: Path, per_class: int) -> Path:
    """The first `per_class` real UCM images of every class, copied in the <class>/<file> layout."""
    if not UCM_IMAGES.is_dir():
        pytest.fail(f"the real UCM images are missing at {UCM_IMAGES} (set RSIR_TEST_DATA_ROOT)")
    for class_dir in sorted(p for p in UCM_IMAGES.iterdir() if p.is_dir()):
        (dest / class_dir.name).mkdir(parents=True)
        for image in sorted(class_dir.iterdir())[:per_class]:
            shutil.copy2(image, dest / class_dir.name / image.name)
    return dest


def make_checkpoint(path: Path, class_names: list[str]) -> Path:
    """A seeded, randomly initialised ResNet-18 embedder (no weights download on these machines)."""
    import torch

    from model.checkpoint import embedder_checkpoint, save_checkpoint
    from model.embedder import EmbedderConfig, build_embedder
    from model.transforms import Preprocessing

    torch.manual_seed(0)
    net, init = build_embedder(EmbedderConfig(backbone="resnet18"), pretrained=False)
    net.eval()
    ckpt = embedder_checkpoint(net, Preprocessing(image_size=IMAGE_SIZE), class_names, init, "ucm")
    save_checkpoint(ckpt, path)
    return path


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 180.0) -> None:
    """Poll /ready until it answers 200; fail with the server's log if it dies or never is."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the service exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            response = httpx.get(f"{url}/ready", timeout=5.0)
            if response.status_code == 200:
                return
            last = f"{response.status_code} {response.text[:500]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.5)
    pytest.fail(f"the service is not ready after {timeout:.0f} s ({last}):\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="session")
def live_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    """Index a few real UCM images per class with a small embedder, then serve them."""
    from indexer.pipeline import index_source

    work = tmp_path_factory.mktemp("browser-service")
    archive = copy_subset(work / "data" / "ucm", PER_CLASS)
    classes = sorted(p.name for p in archive.iterdir())
    checkpoint = make_checkpoint(work / "embedder.pt", classes)
    index_dir = work / "index"
    summary = index_source(
        archive, checkpoint_path=checkpoint, index_dir=index_dir, batch_size=16,
        num_workers=0, device="cpu",
    )  # fmt: skip
    assert summary.index_total == PER_CLASS * len(classes), summary

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "RSIR_DATA_ROOT": str(work / "data"),
        "RSIR_INDEX_DIR": str(index_dir),
        "RSIR_CHECKPOINT": str(checkpoint),
        "RSIR_API_KEY": API_KEY,
        "RSIR_DEVICE": "cpu",
        "RSIR_NUM_WORKERS": "0",
        "RSIR_LOG_LEVEL": "INFO",
    }
    env.pop("RSIR_DB_URL", None)
    env.pop("RSIR_WORKER_URL", None)
    log = work / "serve.log"
    command = [sys.executable, "-m", "uvicorn", "--factory", "service.app:create_app",
               "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(command, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_ready(url, proc, log)
        yield LiveService(url=url, archive=archive, api_key=API_KEY, log=log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
