"""Fine-tuning: cached frozen stages, classification warm start, mining, resuming."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.checkpoint import load_embedder
from model.datasets import discover_dataset
from model.embedder import EmbedderConfig, build_embedder
from model.train_embedder import TrainConfig, mine_tuples, train_embedder
from model.train_inputs import stage_maps
from model.transforms import Preprocessing
from tests.conftest import make_class_folder


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 classes x 6 real UCM images."""
    return make_class_folder(tmp_path_factory.mktemp("tiny"), 6)


def _lite_config(root: Path, **overrides: object) -> TrainConfig:
    base: dict[str, object] = {
        "dataset": "folder",
        "root": str(root),
        "backbone": "efficientnet_lite0",
        "image_size": 64,
        "batch_size": 2,
        "ce_batch_size": 8,
        "ce_epochs": 1,
        "max_epochs": 1,
        "negatives": 1,
        "freeze_stages": 3,
        "num_workers": 0,
        "lr": 1e-3,
    }
    base.update(overrides)
    return TrainConfig(**base)  # type: ignore[arg-type]


def test_cached_stage_maps_give_the_same_descriptors(tiny_folder: Path) -> None:
    images = discover_dataset("folder", tiny_folder)
    net, _ = build_embedder(EmbedderConfig("efficientnet_lite0"))
    pre = Preprocessing.for_backbone("efficientnet_lite0", 64)
    # A fresh network is in train mode: the frozen stages must still use their running
    # batch-norm statistics (regression: batch statistics gave wrong maps).
    maps, labels = stage_maps(net.trunk, 3, images, pre, 0, torch.device("cpu"))
    net.eval()
    assert labels.tolist() == images.labels
    batch = torch.stack(
        [pre.eval_transform()(Image.open(p).convert("RGB")) for p in images.paths[:8]]
    )
    with torch.inference_mode():
        full = net(batch)
        cached = net.embed_from(maps[:8].float(), 3)
    assert (full * cached).sum(dim=1).min() > 0.999


def test_frozen_stage_training_writes_a_usable_checkpoint_and_reuses_its_cache(
    tiny_folder: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    out = train_embedder(_lite_config(tiny_folder, feature_cache=str(cache)), tmp_path / "a.pt")
    net, ckpt = load_embedder(out)
    assert ckpt.init.startswith("imagenet:efficientnet-lite0")
    assert ckpt.preprocessing.mean == (0.5, 0.5, 0.5)
    phases = [h["phase"] for h in ckpt.extra["history"]]
    assert phases == ["classification", "contrastive"]
    files = sorted(cache.rglob("*.pt"))
    assert len(files) == 20  # the 80 % train split of 24 images
    stamps = [f.stat().st_mtime_ns for f in files]
    # Another seed of the same frozen stages: its train split is partly new, the rest reused.
    train_embedder(_lite_config(tiny_folder, feature_cache=str(cache), seed=1), tmp_path / "b.pt")
    assert [f.stat().st_mtime_ns for f in files] == stamps
    # The frozen stages did not move; the trainable ones did.
    fresh, _ = build_embedder(EmbedderConfig("efficientnet_lite0"))
    trained = dict(net.state_dict())
    for key, value in fresh.state_dict().items():
        if key.startswith("trunk.stages.0."):
            assert torch.equal(trained[key], value), key
    head = "trunk.stages.3.2.weight"  # conv_head, in the trainable last stage
    assert not torch.equal(trained[head], fresh.state_dict()[head])


def test_resume_survives_a_change_of_runtime_settings(tiny_folder: Path, tmp_path: Path) -> None:
    """Regression (issue 8, defect 5): device and decoding workers are not hyperparameters."""
    out = tmp_path / "r.pt"

    def stop_after_first(epoch: int, loss: float) -> None:
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_embedder(_lite_config(tiny_folder), out, on_epoch=stop_after_first)
    seen: list[int] = []
    train_embedder(
        _lite_config(tiny_folder, num_workers=1, device="cpu"),
        out,
        on_epoch=lambda e, _: seen.append(e),
    )
    assert seen == [2]  # resumed after epoch 1, did not start again
    # A real hyperparameter change starts afresh.
    seen.clear()
    train_embedder(_lite_config(tiny_folder, lr=5e-4), out, on_epoch=lambda e, _: seen.append(e))
    assert seen == [1, 2]


def test_mining_in_chunks_equals_brute_force() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(60, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    labels = [i % 5 for i in range(60)]
    queries = list(range(60))
    tuples = mine_tuples(torch.from_numpy(vectors), labels, 2, queries, random.Random(0), chunk=7)
    assert len(tuples) == 60
    for q, _, *negatives in tuples:
        sims = vectors @ vectors[q]
        order = [i for i in np.argsort(-sims) if labels[i] != labels[q]]
        expected: list[int] = []
        for i in order:
            if labels[i] not in {labels[j] for j in expected}:
                expected.append(int(i))
            if len(expected) == 2:
                break
        assert negatives == expected
