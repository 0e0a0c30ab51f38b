"""The one loader of embedding models: torch at its best on a CPU, exports served under the
fingerprint rule (model/runtimes.py) for an index made with torch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from indexer.embedding import EmbeddingModel, load_embedding_model
from indexer.options import IndexOptions
from indexer.pipeline import index_source
from indexer.search import Searcher
from model.checkpoint import load_embedder
from model.cores import available_cores, cgroup_cpu_limit
from model.export import export_checkpoint
from model.runtimes import exports_dir
from tests.conftest import make_class_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_class_folder(tmp_path_factory.mktemp("rt-images"), 3)


@pytest.fixture(scope="module")
def exported_checkpoint(trained_checkpoint: Path, folder: Path, tmp_path_factory) -> Path:
    """A copy of the trained checkpoint with an ONNX Runtime fp32 export beside it."""
    path = tmp_path_factory.mktemp("rt-ckpt") / "embedder.pt"
    path.write_bytes(trained_checkpoint.read_bytes())
    record, _ = export_checkpoint(path, "onnx", parity_dir=folder, parity_count=12)
    assert record.passed
    return path


def test_torch_on_cpu_without_cuda_keeps_fp32_and_no_pinning(trained_checkpoint: Path) -> None:
    net, ckpt = load_embedder(trained_checkpoint)
    model = EmbeddingModel(net, ckpt.preprocessing, torch.device("cpu"))
    assert model.runtime == "torch" and not model.pin_memory
    batch = torch.randn(3, 3, 64, 64)
    eager, _ = load_embedder(trained_checkpoint)
    with torch.inference_mode():
        expected = eager(batch).numpy()
    out = model.embed_tensors(batch)  # channels_last, inference_mode, no autocast on a CPU
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_an_index_made_with_torch_is_served_by_the_export(
    exported_checkpoint: Path, folder: Path, tmp_path: Path
) -> None:
    """Same fingerprint: the export searches the torch-made index and finds each image first."""
    summary = index_source(
        folder,
        exported_checkpoint,
        IndexOptions(index_dir=tmp_path, num_workers=0, runtime="torch"),
    )
    assert summary.added == 12
    searcher = Searcher.open(tmp_path, exported_checkpoint, runtime="onnx")
    assert searcher.model.runtime == "onnx-fp32"
    paths = sorted(folder.rglob("*.jpg"))
    hits = searcher.search_images([Image.open(p).convert("RGB") for p in paths], k=1)
    for path, found in zip(paths, hits, strict=True):
        assert found[0].path.endswith(path.name) and found[0].score > 0.999
    searcher.store.close()


def test_an_export_of_another_checkpoint_is_refused_and_torch_serves(
    exported_checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "embedder.pt"
    path.write_bytes(exported_checkpoint.read_bytes())
    exports_dir(path).mkdir()
    for f in exports_dir(exported_checkpoint).iterdir():
        (exports_dir(path) / f.name).write_bytes(f.read_bytes())
    record = exports_dir(path) / "onnx-fp32.json"
    data = json.loads(record.read_text())
    data["fingerprint"] = "ffffffffffffffff"
    record.write_text(json.dumps(data))
    model, _ = load_embedding_model(path, "cpu", "onnx")
    assert model.runtime == "torch"
    assert "made for model ffffffffffffffff" in caplog.text


def test_cgroup_quota_caps_the_cores(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == 1.5
    assert available_cores(tmp_path) <= 2
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert available_cores(v1) == 1
