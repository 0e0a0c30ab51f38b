"""Fixtures for the service tests: real UCM images, a small real index, real apps.

Nothing is trained: a random-initialised ResNet-18 embedder at 64 px makes real (if poor)
descriptors, which is all that routing, batching, jobs and limits need. The images are copied
from ../shared/data into a temporary data root (never into the repository), because the
service refuses paths, symlinks included, that leave its data root.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import httpx
import pytest
import torch
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from indexer.db import upgrade_db
from indexer.options import IndexOptions
from indexer.pipeline import index_source
from model.checkpoint import Checkpoint, embedder_checkpoint, fingerprint, save_checkpoint
from model.classifiers.registry import build_classifier, classifier_config
from model.embedder import EmbedderConfig, build_embedder
from model.transforms import Preprocessing
from rsir_common.settings import Settings
from tests.helpers import running_app

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("RSIR_TEST_DATA", REPO.parent / "shared" / "data"))
UCM = SHARED_DATA / "UCMerced_LandUse" / "Images"
CLASSES = ("agricultural", "beach", "forest", "harbor")
PER_CLASS = 6
IMAGE_SIZE = 64
API_KEY = "test-key-9f3b2c71d0"
POSTGRES_URL = os.environ.get(
    "RSIR_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@dataclass(frozen=True)
class World:
    """The shared read-only test world: data root, checkpoints, a built index."""

    api_key: ClassVar[str] = API_KEY
    classes: ClassVar[tuple[str, ...]] = CLASSES
    per_class: ClassVar[int] = PER_CLASS
    root: Path
    data_root: Path
    collection: Path  # <class>/<image> copies of real UCM images, inside data_root
    checkpoint: Path
    classifiers: tuple[Path, ...]
    index_dir: Path
    fingerprint: str
    sample: Path  # one indexed image, for queries

    def settings(self, index_dir: Path | None = None, **overrides: object) -> Settings:
        values: dict[str, object] = {
            "data_root": self.data_root,
            "index_dir": index_dir or self.index_dir,
            "checkpoint": self.checkpoint,
            "classifier_checkpoints": list(self.classifiers),
            "api_key": API_KEY,
            "device": "cpu",
            "num_workers": 0,
            "batch_size": 16,
            "batch_max_wait_ms": 5.0,
            "worker_url": None,
            "db_url": None,
        }
        values.update(overrides)
        return Settings(**values)  # type: ignore[arg-type]


def _copy_images(target: Path) -> None:
    if not UCM.is_dir():
        pytest.skip(f"real UCM images not found at {UCM}")
    for name in CLASSES:
        (target / name).mkdir(parents=True)
        for src in sorted((UCM / name).glob("*.jpg"))[:PER_CLASS]:
            shutil.copyfile(src, target / name / src.name)


def _save_embedder(path: Path) -> str:
    torch.manual_seed(0)
    net, init = build_embedder(
        EmbedderConfig(backbone="resnet18", pooling="gem", attention=True), pretrained=False
    )
    ckpt = embedder_checkpoint(
        net, Preprocessing(image_size=IMAGE_SIZE), list(CLASSES), init, "ucm-test"
    )
    return save_checkpoint(ckpt, path)


def _save_classifier(path: Path, method: str, seed: int) -> None:
    torch.manual_seed(seed)
    config = classifier_config(method, len(CLASSES), IMAGE_SIZE, backbone="resnet18")
    net, init = build_classifier(config, pretrained=False)
    prep = Preprocessing(image_size=IMAGE_SIZE)
    state = net.deploy_state_dict()
    save_checkpoint(
        Checkpoint(
            kind="classifier",
            config=net.deploy_config(),
            preprocessing=prep,
            class_names=list(CLASSES),
            state_dict=state,
            init=init,
            dataset="ucm-test",
            fingerprint=fingerprint(state, prep),
            extra={"name": f"{method}-test"},
        ),
        path,
    )


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """Built once per session: ~24 real images indexed by a random ResNet-18 at 64 px."""
    root = tmp_path_factory.mktemp("service")
    data_root = root / "data"
    collection = data_root / "ucm-small"
    _copy_images(collection)
    models = root / "models"
    checkpoint = models / "embedder-r18.pt"
    fp = _save_embedder(checkpoint)
    classifiers = (models / "plain-test.pt", models / "pcl-test.pt")
    _save_classifier(classifiers[0], "plain", 1)
    _save_classifier(classifiers[1], "pcl", 2)
    index_dir = root / "index"
    summary = index_source(
        collection,
        checkpoint,
        IndexOptions(index_dir=index_dir, batch_size=16, num_workers=0, device="cpu"),
    )
    assert summary.added == len(CLASSES) * PER_CLASS
    sample = sorted((collection / CLASSES[0]).iterdir())[0]
    return World(root, data_root, collection, checkpoint, classifiers, index_dir, fp, sample)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def client(world: World, anyio_backend: str) -> AsyncIterator[httpx.AsyncClient]:
    """The real app over the ASGI transport, lifespan included (loaded once per module)."""
    async with running_app(world.settings(), poll_seconds=0.2) as http:
        yield http


# ---------------------------------------------------------------------- databases
def _postgres_available() -> bool:
    try:
        engine = create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        engine.dispose()
        return True
    except Exception:
        return False


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database: a SQLite file, or a fresh PostgreSQL schema dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'meta.db'}"
        return
    if not _postgres_available():
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL}")
    schema = f"rsir_test_{os.getpid()}_{abs(hash(request.node.nodeid)) % 10**8}"
    with _postgres_schema(schema) as url:
        yield url


@pytest.fixture
def second_db_url(db_url: str, tmp_path: Path) -> Iterator[str]:
    """Another empty database of `db_url`'s kind, for comparing what two paths leave behind."""
    if db_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'meta-2.db'}"
        return
    schema = f"rsir_test_{os.getpid()}_{abs(hash(db_url)) % 10**8}_second"
    with _postgres_schema(schema) as url:
        yield url


@contextmanager
def _postgres_schema(schema: str) -> Iterator[str]:
    """A URL of the test PostgreSQL whose search path is a fresh schema, dropped afterwards."""
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def migrated_db(db_url: str) -> str:
    """`db_url` with the schema at head."""
    upgrade_db(db_url)
    return db_url


# ---------------------------------------------------------------------- apps
AppFactory = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture(name="running_app")
def running_app_fixture() -> AppFactory:
    """`async with running_app(settings) as client`: a real app, lifespan included
    (tests/helpers.py's `running_app`)."""
    return running_app
