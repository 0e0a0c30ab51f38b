"""`rsir export`: a checkpoint's whole network as an ONNX Runtime or OpenVINO model, fp32 or int8.

Why: depthwise convolutions (EfficientNet-Lite, the default embedder) are slow in torch's CPU
path and fast in these runtimes. What is exported is what torch serves: for an embedder the
trunk, dual attention, pooling and L2 normalisation (unit descriptors out); for a classifier its
deployed network and the softmax (class probabilities out). Batch size is free, image size is
the checkpoint's. int8 is post-training static quantization calibrated on real images other than
the parity ones, made by each runtime's own tool, because each runtime is fast only on the graph
it expects: ONNX Runtime's QDQ format for ONNX Runtime (`quantize_int8`), NNCF's FakeQuantize
graph for OpenVINO (`quantize_openvino_int8`; OpenVINO ran the QDQ graph no faster than fp32).

Every export is checked against torch on real images before it is recorded; the record (JSON
beside the model) holds the checkpoint fingerprint it is bound to, the parity figures, the
speed of both in the same run and the file's SHA-256 (model/runtimes.py states the rule).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from model.checkpoint import Checkpoint, load_checkpoint, load_embedder
from model.cores import available_cores
from model.datasets import _is_image
from model.imageio import ImageDecodeError, read_image
from model.runtimes import (
    EXPORT_RUNTIMES,
    PARITY_THRESHOLDS,
    ExportRecord,
    exports_dir,
    files_sha256,
    model_files,
    open_runner,
)

log = logging.getLogger(__name__)

CALIBRATION_IMAGES = 300
PARITY_IMAGES = 64
SPEED_BATCH = 32
OPSET = 18


class ExportError(RuntimeError):
    """The checkpoint cannot be exported as asked; the message says why."""


class _Probabilities(nn.Module):
    """A classifier's deployed network followed by its softmax, as the service answers."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(images), dim=1)


def torch_network(ckpt: Checkpoint, path: Path) -> nn.Module:
    """The eval-mode torch module whose outputs the export must reproduce."""
    if ckpt.kind == "embedder":
        embedder, _ = load_embedder(path)
        return embedder
    if ckpt.kind != "classifier":
        raise ExportError(f"{path} holds a {ckpt.kind!r} checkpoint; nothing to export")
    from model.classifiers.registry import build_deployed, get_method

    refusal = get_method(str(ckpt.config.get("method"))).export_refusal
    if refusal is not None:
        raise ExportError(refusal)
    net = build_deployed(ckpt.config)
    net.load_state_dict(ckpt.state_dict)
    return _Probabilities(net).eval()


def image_files(
    folder: Path, count: int, offset: float = 0.0, exclude: Sequence[Path] = ()
) -> list[Path]:
    """`count` images spread evenly over the sorted files below `folder` (so every class folder
    contributes), leaving out `exclude`; `offset` in [0, 1) shifts the picks. Calibration
    images are picked with the parity images excluded: an offset alone does not keep them apart
    (300 picks at offset 0 and 64 at offset 0.5 over 2,100 files share images)."""
    left_out = {Path(p).resolve() for p in exclude}
    files = sorted(
        p
        for p in Path(folder).rglob("*")
        if p.is_file() and _is_image(p) and p.resolve() not in left_out
    )
    if not files:
        raise ExportError(
            f"no images below {folder}" + (" besides the parity images" if left_out else "")
        )
    if len(files) <= count:
        return files
    step = len(files) / count
    return [files[min(len(files) - 1, int((i + offset) * step))] for i in range(count)]


def load_batch(ckpt: Checkpoint, paths: Sequence[Path]) -> torch.Tensor:
    """Decode and preprocess images as the service does; unreadable files are skipped."""
    transform = ckpt.preprocessing.eval_transform()
    tensors = []
    for path in paths:
        try:
            tensors.append(transform(read_image(path)))
        except (ImageDecodeError, OSError) as exc:
            log.warning("skipped %s: %s", path, exc)
    if not tensors:
        raise ExportError("none of the images could be decoded")
    return torch.stack(tensors)


def export_onnx(net: nn.Module, image_size: int, path: Path) -> None:
    """torch.export-based ONNX export with a free batch axis, weights inside the one file."""
    example = torch.randn(2, 3, image_size, image_size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(
            net,
            (example,),
            str(path),
            input_names=["images"],
            output_names=["outputs"],
            dynamic_shapes={"images": {0: batch}},
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )


class _Calibration:
    """ONNX Runtime's calibration reader over preprocessed real images, a few at a time."""

    def __init__(self, images: torch.Tensor, input_name: str, batch: int = 8) -> None:
        self._batches: Iterator[dict[str, np.ndarray]] = (
            {input_name: images[i : i + batch].numpy()} for i in range(0, len(images), batch)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


# Quantized: convolutions and the activation after each, except those at the stem's resolution.
# Why, measured on the default embedder (ImageNet EfficientNet-Lite0 + attention + GeM, 224 px;
# mean cosine to torch on 32 UCM images, calibrated on 64 others; bench/results/
# embedding_runtimes.md, "int8 parity"):
# - A convolution's output quantized on its own gets a scale for its whole pre-activation range
#   (tens, both signs), of which the ReLU6 after it keeps [0, 6]: most of the 256 levels are
#   wasted. With Clip/Relu quantized too, ONNX Runtime folds the activation into the output's
#   QDQ, whose range is then the activation's: 0.889 -> 0.990.
# - Most of what is left comes from the first layers (excluding stage 0: 0.995; stage 1, 2, 3:
#   0.992 each). Keeping the convolutions at the stem's resolution (the first convolution's
#   output size: Lite0's stem, first block and next expansion at 112 x 112; ResNet's 7 x 7 stem)
#   in float gives 0.994 (min 0.984), and was not slower: an int8 convolution over 3 input
#   channels gains nothing. The attention convolutions and GeM make no difference (< 1e-5).
# Percentile or entropy ranges, symmetric or reduce-range activations and NNCF's own
# post-training quantization did not do better (same file).
INT8_OP_TYPES = ["Conv", "Clip", "Relu"]


def stem_resolution_convs(model: Any) -> list[str]:
    """Names of the Conv nodes of an ONNX model (shapes inferred) whose output has the spatial
    size of the first convolution's output; just the first when shapes are unknown."""
    sizes = {}
    for info in model.graph.value_info:
        dims = [d.dim_value for d in info.type.tensor_type.shape.dim]
        if len(dims) == 4 and dims[2] > 0 and dims[3] > 0:
            sizes[info.name] = dims[2] * dims[3]
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    if not convs:
        return []
    stem = sizes.get(convs[0].output[0])
    if stem is None:
        return [convs[0].name]
    return [n.name for n in convs if sizes.get(n.output[0]) == stem]


def quantize_int8(fp32_path: Path, int8_path: Path, calibration: torch.Tensor) -> list[str]:
    """Static int8 calibrated on real images: QDQ, per-channel symmetric int8 weights,
    asymmetric int8 activations from min-max ranges, on `INT8_OP_TYPES` except the
    convolutions at the stem's resolution; attention, GeM and the normalisation stay in float.
    Returns the names of the convolutions kept in float."""
    onnx = importlib.import_module("onnx")
    quantization = importlib.import_module("onnxruntime.quantization")
    shape_inference = importlib.import_module("onnxruntime.quantization.shape_inference")
    prepared = int8_path.with_name(int8_path.stem + ".prep.onnx")
    shape_inference.quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
    try:
        kept_float = stem_resolution_convs(onnx.load(str(prepared), load_external_data=False))
        with _quiet_logger():  # one INFO line per adjusted weight scale otherwise
            quantization.quantize_static(
                str(prepared),
                str(int8_path),
                _Calibration(calibration, "images"),
                quant_format=quantization.QuantFormat.QDQ,
                per_channel=True,
                activation_type=quantization.QuantType.QInt8,
                weight_type=quantization.QuantType.QInt8,
                op_types_to_quantize=INT8_OP_TYPES,
                nodes_to_exclude=kept_float,
                calibrate_method=quantization.CalibrationMethod.MinMax,
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            )
    finally:
        prepared.unlink(missing_ok=True)
    return kept_float


@contextlib.contextmanager
def _quiet_logger(name: str | None = None) -> Iterator[None]:
    """Raise a logger (the root by default) to WARNING for the block: ONNX Runtime's quantizer
    logs through the root logger at INFO (a line for every channel whose weight scale it widens
    to fit an int32 bias) and NNCF a line per node it leaves float; keep that out of rsir's log."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def to_openvino(onnx_path: Path, xml_path: Path) -> None:
    """OpenVINO IR (.xml + .bin) of an ONNX model; weights stay fp32."""
    ov = importlib.import_module("openvino")
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml_path), compress_to_fp16=False)


# OpenVINO int8 is NNCF's post-training quantization of the OpenVINO model: FakeQuantize nodes
# with unsigned activations after ReLU6/ReLU and signed per-channel weights, which OpenVINO's CPU
# plugin runs on its int8 (VNNI) kernels. The QDQ graph above, with signed asymmetric activations,
# ran in OpenVINO at fp32 speed (1.0-1.1x). Kept in float, measured on the default embedder
# (ImageNet EfficientNet-Lite0 + attention + GeM, 224 px; mean cosine to torch on 64 UCM images,
# 300 others calibrating; Intel Xeon, 2 cores, 2026-11-28; embedding_runtimes_int8.md in
# bench/results):
# - GeM (`Power`, `AvgPool`): its cube spreads activations over orders of magnitude that one
#   int8 scale cannot hold: everything quantized 0.980 (min 0.950), GeM in float 0.991 (0.958).
# - the convolutions at the stem's resolution, as for ONNX Runtime: 0.9915 (min 0.973).
# - the attention's activation-by-activation products (`MatMul`, `Softmax`): no measurable
#   difference at initialisation (the attention starts as the identity), kept in float so that a
#   fine-tuned attention keeps its arithmetic; a classifier's linear head is a MatMul too.
# Speed of the result against OpenVINO fp32 in the same run: 1.2-1.7x (Lite0), 2.4-2.8x
# (ResNet-50); against torch eager 7.3x and 7.2x at batch 32 (embedding_runtimes_speed.md).
OPENVINO_FLOAT_TYPES = ["Power", "AvgPool", "MatMul", "Softmax"]


def openvino_stem_resolution_convs(model: Any) -> list[str]:
    """Friendly names of an OpenVINO model's convolutions whose output has the spatial size of
    its first convolution's output (static spatial dimensions; the batch may be free)."""
    convs = [
        op
        for op in model.get_ordered_ops()
        if op.get_type_name() in ("Convolution", "GroupConvolution")
    ]
    if not convs:
        return []

    def spatial(op: Any) -> str:
        return str(op.get_output_partial_shape(0)[2:])

    stem = spatial(convs[0])
    return [op.get_friendly_name() for op in convs if spatial(op) == stem]


def quantize_openvino_int8(fp32_path: Path, xml_path: Path, calibration: torch.Tensor) -> list[str]:
    """NNCF post-training int8 of the ONNX model `fp32_path`, saved as OpenVINO IR at
    `xml_path`, calibrated on `calibration` one image at a time; `OPENVINO_FLOAT_TYPES` and the
    stem-resolution convolutions stay float. Returns the names of the convolutions kept float."""
    ov = importlib.import_module("openvino")
    try:
        nncf = importlib.import_module("nncf")
    except ImportError as exc:
        raise ExportError(f"OpenVINO int8 needs NNCF: pip install nncf ({exc})") from exc
    model = ov.convert_model(str(fp32_path))
    kept_float = openvino_stem_resolution_convs(model)
    samples = [calibration[i : i + 1].numpy() for i in range(len(calibration))]
    with _quiet_logger("nncf"):
        quantized = nncf.quantize(
            model,
            nncf.Dataset(samples),
            subset_size=len(samples),
            ignored_scope=nncf.IgnoredScope(
                names=kept_float, types=OPENVINO_FLOAT_TYPES, validate=False
            ),
        )
    ov.save_model(quantized, str(xml_path), compress_to_fp16=False)
    return kept_float


def images_per_s(run: Any, batch: Any, repeats: int = 2) -> float:
    """Best of `repeats` timed passes over `batch` after one warm-up pass."""
    run(batch)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run(batch)
        best = min(best, time.perf_counter() - started)
    return len(batch) / best


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return np.sum(a * b, axis=1)


def export_checkpoint(
    checkpoint_path: Path,
    runtime: str,
    *,
    int8: bool = False,
    calibration_dir: Path | None = None,
    parity_dir: Path,
    calibration_count: int = CALIBRATION_IMAGES,
    parity_count: int = PARITY_IMAGES,
    measure: bool = True,
    out_dir: Path | None = None,
) -> tuple[ExportRecord, Path]:
    """Export, check parity on real images, write the record; returns it and its path.

    A failed parity check still writes the record (passed: false), so the runtime choice can
    say why it refuses the export; the caller decides whether that is an error.
    """
    if runtime not in EXPORT_RUNTIMES:
        raise ExportError(f"unknown runtime {runtime!r}; choose one of {list(EXPORT_RUNTIMES)}")
    if int8 and calibration_dir is None:
        raise ExportError("--int8 needs --calibration DIR (real images, a few hundred)")
    checkpoint_path = Path(checkpoint_path)
    ckpt = load_checkpoint(checkpoint_path)
    net = torch_network(ckpt, checkpoint_path)
    size = ckpt.preprocessing.image_size
    precision = "int8" if int8 else "fp32"
    folder = Path(out_dir) if out_dir is not None else exports_dir(checkpoint_path)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{runtime}-{precision}"
    model_name = f"{name}.xml" if runtime == "openvino" else f"{name}.onnx"
    calibration: dict[str, Any] = {}
    parity_paths = image_files(parity_dir, parity_count, offset=0.5)

    # Work files beside the exports, so that os.replace never crosses filesystems.
    with tempfile.TemporaryDirectory(prefix=".rsir-export-", dir=folder) as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        log.info("exporting %s to ONNX", checkpoint_path)
        export_onnx(net, size, fp32)
        target = folder / model_name
        if int8:
            assert calibration_dir is not None
            calib_paths = image_files(calibration_dir, calibration_count, exclude=parity_paths)
            calib = load_batch(ckpt, calib_paths)
            log.info("calibrating int8 on %d images", len(calib))
            calibration = {"images": len(calib), "folder": str(calibration_dir)}
            calibration.update(_quantize(runtime, fp32, target, calib, Path(tmp)))
        elif runtime == "openvino":
            to_openvino(fp32, target)
        else:
            os.replace(fp32, target)

    record = ExportRecord(
        fingerprint=ckpt.fingerprint,
        kind=ckpt.kind,
        runtime=runtime,
        precision=precision,
        model_file=model_name,
        sha256="",
        image_size=size,
        output_dim=0,
        calibration=calibration,
        versions=_versions(),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    record.sha256 = files_sha256(model_files(record, folder))
    threads = available_cores()
    runner = open_runner(record, folder, threads)

    images = load_batch(ckpt, parity_paths)
    with torch.inference_mode():
        reference = net(images).numpy()
    ours = runner(images.numpy())
    record.output_dim = int(ours.shape[1])
    cosines = cosine_rows(reference, ours)
    threshold = PARITY_THRESHOLDS[precision]
    record.parity = {
        "images": len(images),
        "folder": str(parity_dir),
        "mean_cosine": float(cosines.mean()),
        "min_cosine": float(cosines.min()),
        "threshold_mean_cosine": threshold,
        "passed": bool(cosines.mean() >= threshold),
    }
    if ckpt.kind == "classifier":
        agree = reference.argmax(1) == ours.argmax(1)
        record.parity["top1_agreement"] = float(agree.mean())
    if measure:
        batch = images[:SPEED_BATCH]
        if len(batch) < SPEED_BATCH:
            batch = batch.repeat((SPEED_BATCH + len(batch) - 1) // len(batch), 1, 1, 1)[
                :SPEED_BATCH
            ]
        with torch.inference_mode():
            torch_rate = images_per_s(net, batch)
        record.speed = {
            "batch": SPEED_BATCH,
            "threads": threads,
            "images_per_s": images_per_s(runner, batch.numpy()),
            "torch_images_per_s": torch_rate,
        }
    record_path = folder / f"{name}.json"
    tmp_record = record_path.with_suffix(".json.tmp")
    tmp_record.write_text(record.to_json())
    os.replace(tmp_record, record_path)
    return record, record_path


def _quantize(
    runtime: str, fp32: Path, target: Path, calib: torch.Tensor, work: Path
) -> dict[str, Any]:
    """Write `target` as the int8 model for `runtime` (intermediate files in `work`); returns
    how it was made, for the record."""
    if runtime == "openvino":
        kept = quantize_openvino_int8(fp32, target, calib)
        return {"tool": "nncf", "float_op_types": OPENVINO_FLOAT_TYPES, "float_convs": kept}
    int8 = work / "int8.onnx"
    kept = quantize_int8(fp32, int8, calib)
    os.replace(int8, target)
    return {
        "tool": "onnxruntime static QDQ",
        "quantized_ops": INT8_OP_TYPES,
        "ranges": "min-max",
        "float_convs": kept,
    }


def _versions() -> dict[str, str]:
    versions: dict[str, str] = {"torch": str(torch.__version__)}
    for package in ("onnxruntime", "openvino", "onnx", "nncf"):
        try:
            versions[package] = str(importlib.import_module(package).__version__)
        except ImportError:
            continue
    return versions
