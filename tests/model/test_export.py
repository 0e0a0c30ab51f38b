"""rsir export: whole networks to ONNX Runtime / OpenVINO, checked against torch on real images,
and the runtime choice that uses them or falls back to torch with a reason."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from model.backbones import list_backbones
from model.checkpoint import Checkpoint, embedder_checkpoint, save_checkpoint
from model.embedder import EmbedderConfig, build_embedder
from model.export import ExportError, export_checkpoint, image_files, load_batch
from model.runtimes import PARITY_THRESHOLDS, ExportRecord, choose_runtime, exports_dir
from model.transforms import Preprocessing
from tests.conftest import REPO, UCM_IMAGES, make_class_folder

SIZE = 64  # small images keep the exports' parity checks fast; the graph is the same


def _embedder_checkpoint(folder: Path, backbone: str) -> Path:
    torch.manual_seed(0)
    net, init = build_embedder(EmbedderConfig(backbone), pretrained=False)
    path = folder / f"{backbone}.pt"
    save_checkpoint(
        embedder_checkpoint(net, Preprocessing.for_backbone(backbone, SIZE), [], init, "none"),
        path,
    )
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 classes x 3 real UCM images."""
    return make_class_folder(tmp_path_factory.mktemp("export-images"), 3)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, images: Path) -> tuple[Path, ExportRecord]:
    """A ResNet-18 + attention + GeM checkpoint and its ONNX Runtime fp32 export."""
    path = _embedder_checkpoint(tmp_path_factory.mktemp("exported"), "resnet18")
    record, _ = export_checkpoint(path, "onnx", parity_dir=images, parity_count=12)
    return path, record


@pytest.mark.slow
@pytest.mark.parametrize("backbone", list_backbones())
def test_every_backbone_round_trips_through_onnx(
    backbone: str, tmp_path: Path, images: Path
) -> None:
    path = _embedder_checkpoint(tmp_path, backbone)
    record, record_path = export_checkpoint(
        path, "onnx", parity_dir=images, parity_count=12, measure=False
    )
    assert record.parity["passed"] and record.parity["mean_cosine"] >= 0.999
    assert record.parity["images"] == 12
    assert json.loads(record_path.read_text())["fingerprint"] == record.fingerprint
    choice = choose_runtime(path, record.fingerprint, "onnx", threads=2)
    assert choice.runner is not None, choice.reason
    ckpt_images = load_batch(_ckpt(path), image_files(images, 3))
    for batch in (ckpt_images[:1], ckpt_images):  # the batch axis is free
        out = choice.runner(batch.numpy())
        assert out.shape[0] == len(batch)
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-4)


def _ckpt(path: Path) -> Checkpoint:
    from model.checkpoint import load_checkpoint

    return load_checkpoint(path)


@pytest.mark.slow
def test_openvino_fp32_matches_torch_on_real_images(tmp_path: Path, images: Path) -> None:
    path = _embedder_checkpoint(tmp_path, "resnet18")
    record, _ = export_checkpoint(path, "openvino", parity_dir=images, parity_count=12)
    assert record.model_file.endswith(".xml")
    assert (exports_dir(path) / "openvino-fp32.bin").is_file()
    assert record.parity["mean_cosine"] >= 0.999 and record.passed
    assert record.speed["images_per_s"] > 0 and record.speed["torch_images_per_s"] > 0


# Mean cosine of the int8 default embedder to torch, below which the export is broken on any
# CPU. ONNX Runtime's int8 kernels give the same figures everywhere measured (0.99); OpenVINO's
# depend on the CPU's int8 instructions (NNCF's graph, 32 calibration images: 0.991 on an Intel
# Xeon with VNNI; the QDQ graph it replaced gave 0.994 there and 0.974 on an AMD EPYC with AVX2
# only, where the parity rule then refused it). Quantizing convolutions without their ReLU6 gave
# 0.89, and NNCF with GeM quantized 0.95 to 0.98: the floors catch the first.
INT8_FLOOR = {"onnx": 0.98, "openvino": 0.96}


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["onnx", "openvino"])
def test_default_embedder_int8_parity_on_real_images_decides_its_use(
    runtime: str, tmp_path: Path
) -> None:
    """The default embedder (ImageNet EfficientNet-Lite0 + attention + GeM, 224 px) quantized
    to int8 on 32 real UCM images stays close to torch on 24 others, and is used for the
    checkpoint exactly when it passes the parity rule (mean cosine >= 0.98); otherwise torch
    serves and the reason names the failed check."""
    torch.manual_seed(0)
    net, init = build_embedder(EmbedderConfig("efficientnet_lite0"), pretrained=True)
    path = tmp_path / "default.pt"
    pre = Preprocessing.for_backbone("efficientnet_lite0")
    save_checkpoint(embedder_checkpoint(net, pre, [], init, "none"), path)
    record, _ = export_checkpoint(
        path,
        runtime,
        int8=True,
        calibration_dir=UCM_IMAGES,
        calibration_count=32,
        parity_dir=UCM_IMAGES,
        parity_count=24,
        measure=False,
    )
    assert record.precision == "int8" and record.image_size == 224
    assert record.calibration["images"] == 32 and record.parity["images"] == 24
    mean_cosine = record.parity["mean_cosine"]
    assert mean_cosine >= INT8_FLOOR[runtime], record.parity
    assert record.passed == (mean_cosine >= PARITY_THRESHOLDS["int8"])
    if runtime == "openvino":
        _assert_openvino_int8_structure(exports_dir(path) / record.model_file, record)
    # the fingerprint rule: bound to this checkpoint, used for it only if it passed
    choice = choose_runtime(path, _ckpt(path).fingerprint, runtime, threads=2)
    if not record.passed:
        assert choice.name == "torch" and choice.runner is None
        assert "failed its parity check" in choice.reason, choice.reason
        return
    assert choice.name == f"{runtime}-int8", choice.reason
    assert choice.runner is not None
    batch = load_batch(_ckpt(path), image_files(UCM_IMAGES, 2, offset=0.25))
    with torch.inference_mode():
        reference = net.eval()(batch).numpy()
    ours = choice.runner(batch.numpy())
    assert np.min(np.sum(reference * ours, axis=1)) > 0.9


def _assert_openvino_int8_structure(xml: Path, record: ExportRecord) -> None:
    """NNCF's model runs the trunk's convolutions on int8 inputs (FakeQuantize before them) and
    keeps what the export says in float: the stem-resolution convolutions and GeM."""
    import openvino as ov

    ops = {op.get_friendly_name(): op for op in ov.Core().read_model(str(xml)).get_ordered_ops()}

    def int8_input(op: object) -> bool:
        source = op.input(0).get_source_output().get_node()  # type: ignore[attr-defined]
        return bool(source.get_type_name() == "FakeQuantize")

    convs = [op for op in ops.values() if op.get_type_name().endswith("Convolution")]
    assert sum(int8_input(op) for op in convs) >= len(convs) - 8, "most convolutions int8"
    float_convs = record.calibration["float_convs"]
    assert len(float_convs) == 4  # Lite0 at 112 x 112: stem, first block, next expansion
    assert not any(int8_input(ops[name]) for name in float_convs)
    gem = [op for op in ops.values() if op.get_type_name() in ("Power", "AvgPool")]
    assert gem and not any(int8_input(op) for op in gem)


def test_openvino_int8_without_nncf_is_refused_with_the_reason(
    exported: tuple[Path, ExportRecord],
    images: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "nncf", None)  # `import nncf` raises ImportError
    with pytest.raises(ExportError, match="needs NNCF"):
        export_checkpoint(
            exported[0], "openvino", int8=True, calibration_dir=images, calibration_count=4,
            parity_dir=images, parity_count=4, measure=False, out_dir=tmp_path,
        )  # fmt: skip
    assert not list(tmp_path.glob("openvino-int8*"))  # no model, no record


def test_calibration_images_are_never_parity_images() -> None:
    parity = image_files(UCM_IMAGES, 64, offset=0.5)
    calibration = image_files(UCM_IMAGES, 300, exclude=parity)
    assert len(calibration) == 300 and not set(calibration) & set(parity)
    assert set(image_files(UCM_IMAGES, 300)) & set(parity)  # what the offset alone gave
    with pytest.raises(ExportError, match="besides the parity images"):
        image_files(UCM_IMAGES / "beach", 10, exclude=image_files(UCM_IMAGES / "beach", 100))


def test_int8_without_calibration_images_is_refused(exported: tuple[Path, ExportRecord]) -> None:
    with pytest.raises(ExportError, match="calibration"):
        export_checkpoint(exported[0], "onnx", int8=True, parity_dir=UCM_IMAGES)


@pytest.mark.slow
def test_plain_classifier_exports_probabilities(tmp_path: Path, images: Path) -> None:
    from model.classifiers.registry import build_deployed, classifier_config

    torch.manual_seed(0)
    config = classifier_config("plain", 4, SIZE, "resnet18")
    net = build_deployed(config)
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    path = tmp_path / "plain.pt"
    save_checkpoint(
        Checkpoint(
            "classifier", config, Preprocessing(SIZE), ["a", "b", "c", "d"], state, "random"
        ),
        path,
    )
    record, _ = export_checkpoint(path, "onnx", parity_dir=images, parity_count=12, measure=False)
    assert record.kind == "classifier" and record.output_dim == 4
    assert record.parity["mean_cosine"] >= 0.999
    assert record.parity["top1_agreement"] == 1.0


def test_ddrl_am_is_refused_with_the_reason(tmp_path: Path) -> None:
    from model.classifiers.registry import build_deployed, classifier_config

    config = classifier_config("ddrl-am", 4, SIZE)
    net = build_deployed(config)
    path = tmp_path / "ddrl.pt"
    save_checkpoint(
        Checkpoint("classifier", config, Preprocessing(SIZE), list("abcd"), net.state_dict(), "r"),
        path,
    )
    with pytest.raises(ExportError, match="Grad-CAM"):
        export_checkpoint(path, "onnx", parity_dir=UCM_IMAGES)


# ---------------------------------------------------------------- the runtime choice


def test_auto_picks_a_passing_export_that_was_faster(exported: tuple[Path, ExportRecord]) -> None:
    path, record = exported
    choice = choose_runtime(path, record.fingerprint, "auto", threads=2)
    if record.speedup > 1.0:
        assert choice.name == "onnx-fp32", choice.reason
    else:  # slower than torch in its own run: auto keeps torch, and says so
        assert choice.runner is None and "faster than torch" in choice.reason
    torch_choice = choose_runtime(path, record.fingerprint, "torch", threads=2)
    assert torch_choice.runner is None and torch_choice.name == "torch"


def _copy_with_export(src: Path, dest: Path) -> Path:
    shutil.copy(src, dest / src.name)
    shutil.copytree(exports_dir(src), exports_dir(dest / src.name))
    return dest / src.name


def test_an_export_of_another_model_is_refused(
    exported: tuple[Path, ExportRecord], tmp_path: Path
) -> None:
    path = _copy_with_export(exported[0], tmp_path)
    record_file = exports_dir(path) / "onnx-fp32.json"
    data = json.loads(record_file.read_text())
    data["fingerprint"] = "0123456789abcdef"
    record_file.write_text(json.dumps(data))
    choice = choose_runtime(path, exported[1].fingerprint, "onnx", threads=2)
    assert choice.runner is None and choice.name == "torch"
    assert "made for model 0123456789abcdef" in choice.reason


def test_a_broken_export_falls_back_to_torch_and_says_why(
    exported: tuple[Path, ExportRecord], tmp_path: Path
) -> None:
    path = _copy_with_export(exported[0], tmp_path)
    model_file = exports_dir(path) / "onnx-fp32.onnx"
    model_file.write_bytes(model_file.read_bytes()[:1000])
    choice = choose_runtime(path, exported[1].fingerprint, "onnx", threads=2)
    assert choice.runner is None and "changed since its parity check" in choice.reason


def test_a_failed_parity_check_is_never_used(
    exported: tuple[Path, ExportRecord], tmp_path: Path
) -> None:
    path = _copy_with_export(exported[0], tmp_path)
    record_file = exports_dir(path) / "onnx-fp32.json"
    data = json.loads(record_file.read_text())
    data["parity"]["passed"] = False
    record_file.write_text(json.dumps(data))
    choice = choose_runtime(path, exported[1].fingerprint, "auto", threads=2)
    assert choice.runner is None and "failed its parity check" in choice.reason


def test_a_missing_runtime_package_falls_back_to_torch(
    exported: tuple[Path, ExportRecord],
) -> None:
    """A fresh interpreter where onnxruntime cannot be imported (as on an install without it)."""
    path, record = exported
    code = (
        "import sys; sys.modules['onnxruntime'] = None\n"
        "from pathlib import Path\n"
        "from model.runtimes import choose_runtime\n"
        f"c = choose_runtime(Path({str(path)!r}), {record.fingerprint!r}, 'onnx', 2)\n"
        "print(c.name, '|', c.reason)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert out.startswith("torch |") and "onnxruntime is not installed" in out


def test_unknown_runtime_setting_is_an_error(exported: tuple[Path, ExportRecord]) -> None:
    with pytest.raises(ValueError, match="unknown runtime"):
        choose_runtime(exported[0], exported[1].fingerprint, "tensorrt", threads=2)
