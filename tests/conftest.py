"""Shared fixtures: real images from ../shared/data, tiny generated ones, small trained
checkpoints, DB URLs; and the `real_data` marker.

Every test that reads the real benchmark images of ../shared/data (RSIR_DATA_ROOT) is marked
`real_data` here, at collection: those that use a fixture which reads them (`REAL_DATA_FIXTURES`,
and whatever depends on one) and those of a module that imports the data paths
(`REAL_DATA_NAMES`). CI runs them all (and fails if the data is missing:
RSIR_REQUIRE_REAL_DATA=1 in .ci/run); elsewhere they are skipped with the reason when the data
is not there, and `pytest -m "not real_data"` runs the tests that stand on their own, on the tiny
fixtures of tests/data/make_tiny.py.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.data.make_tiny import Tiny, make_tiny

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("RSIR_DATA_ROOT", REPO.parent / "shared" / "data")).resolve()
UCM_IMAGES = DATA_ROOT / "UCMerced_LandUse" / "Images"
UCM_TIFF = DATA_ROOT / "UCMerced_LandUse_tif_sample" / "Images"
NWPU12 = DATA_ROOT / "NWPU-RESISC12"
POSTGRES_URL = os.environ.get(
    "RSIR_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
SMALL_CLASSES = ("agricultural", "beach", "forest", "harbor")
REAL_DATA_FIXTURES = frozenset({"small_folder", "world"})
REAL_DATA_NAMES = frozenset(
    {"DATA_ROOT", "UCM_IMAGES", "UCM_TIFF", "NWPU12", "UCM", "GEOTIFF", "ucm_files",
     "make_class_folder", "lite0_descriptors"}
)  # fmt: skip


def reads_real_data(item: pytest.Item) -> bool:
    """True for a test that reads ../shared/data (see the module doc)."""
    if item.get_closest_marker("real_data"):
        return True
    if REAL_DATA_FIXTURES & set(getattr(item, "fixturenames", ())):
        return True
    module = getattr(item, "module", None)
    return module is not None and bool(REAL_DATA_NAMES & set(vars(module)))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if reads_real_data(item) and not item.get_closest_marker("real_data"):
            item.add_marker(pytest.mark.real_data)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("real_data") and not UCM_IMAGES.is_dir():
        reason = f"the real benchmark images are not at {DATA_ROOT} (set RSIR_DATA_ROOT)"
        if os.environ.get("RSIR_REQUIRE_REAL_DATA"):
            pytest.fail(reason)
        pytest.skip(reason)


def ucm_files(cls: str, n: int) -> list[Path]:
    """The first n real UCM images of a class."""
    return sorted((UCM_IMAGES / cls).glob("*.jpg"))[:n]


def make_class_folder(dest: Path, per_class: int, classes: tuple[str, ...] = SMALL_CLASSES) -> Path:
    """A <class>/<image> folder of real UCM images (copied into a temporary directory)."""
    for cls in classes:
        (dest / cls).mkdir(parents=True, exist_ok=True)
        for src in ucm_files(cls, per_class):
            shutil.copy(src, dest / cls / src.name)
    return dest


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    """The tiny generated fixtures (tests/data/make_tiny.py): scenes, archives, a GeoTIFF."""
    return make_tiny(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def small_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 classes x 10 real UCM images."""
    return make_class_folder(tmp_path_factory.mktemp("ucm-small"), 10)


@pytest.fixture(scope="session")
def trained_checkpoint(small_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ResNet-18 + attention + GeM embedder trained one epoch at 64 px on real images."""
    from model.train_embedder import TrainConfig, train_embedder

    out = tmp_path_factory.mktemp("ckpt") / "embedder.pt"
    cfg = TrainConfig(
        dataset="folder",
        root=str(small_folder),
        backbone="resnet18",
        image_size=64,
        batch_size=4,
        max_epochs=1,
        negatives=1,
        num_workers=0,
        pretrained=False,
    )
    return train_embedder(cfg, out)


@pytest.fixture(scope="session")
def other_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained embedder of the same architecture: a different model fingerprint."""
    import torch

    from model.checkpoint import embedder_checkpoint, save_checkpoint
    from model.embedder import EmbedderConfig, build_embedder
    from model.transforms import Preprocessing

    torch.manual_seed(123)
    net, init = build_embedder(EmbedderConfig("resnet18"), pretrained=False)
    out = tmp_path_factory.mktemp("other") / "other.pt"
    save_checkpoint(embedder_checkpoint(net, Preprocessing(64), [], init, "none"), out)
    return out


def _postgres_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(POSTGRES_URL.replace("+psycopg", ""), connect_timeout=3):
            return True
    except Exception:
        return False


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty metadata DB: a SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'metadata.db'}"
        return
    if not _postgres_available():
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not reachable at {POSTGRES_URL}")
        pytest.skip(f"PostgreSQL is not reachable at {POSTGRES_URL}")
    import psycopg

    name = f"rsir_test_{uuid.uuid4().hex[:10]}"
    admin = POSTGRES_URL.replace("+psycopg", "")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def lite0_descriptors(classes: list[str], per_class: int, size: int) -> tuple[Any, Any]:
    """Off-the-shelf ImageNet EfficientNet-Lite0 + GeM descriptors of the first `per_class` real
    UCM images of each class, and their labels (0..len(classes)-1)."""
    import numpy as np
    import torch
    from PIL import Image

    from model.embedder import EmbedderConfig, build_embedder
    from model.transforms import Preprocessing

    paths = [p for c in classes for p in ucm_files(c, per_class)]
    net, _ = build_embedder(EmbedderConfig("efficientnet_lite0", attention=False))
    pre = Preprocessing.for_backbone("efficientnet_lite0", size)
    batch = torch.stack([pre.eval_transform()(Image.open(p).convert("RGB")) for p in paths])
    net.eval()
    with torch.inference_mode():
        descriptors = net(batch).numpy()
    return descriptors, np.repeat(np.arange(len(classes)), per_class)
