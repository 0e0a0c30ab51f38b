"""Exported models (ONNX Runtime, OpenVINO) behind one call, and the choice between them and torch.

The fingerprint rule. A checkpoint's fingerprint (weights + preprocessing) names the model; an
export never gets a fingerprint of its own. An export is bound to the fingerprint of the
checkpoint it was made from and is used only for that checkpoint, and only if its parity check
on real images passed at export time: mean cosine to torch >= 0.999 for fp32 and >= 0.98 for int8
(`PARITY_THRESHOLDS`). Such an export computes the same model's descriptors, so it serves,
searches and extends an index made with torch (and torch one made with it); descriptors that
differ by quantization are the same model's within the recorded tolerance. An export made for
another checkpoint, one whose file changed since its check (SHA-256 in its record), or one that
failed its check is refused, and torch runs instead, with the reason logged.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

EXPORT_RUNTIMES = ("onnx", "openvino")
RUNTIME_CHOICES = ("auto", "torch", *EXPORT_RUNTIMES)
PARITY_THRESHOLDS = {"fp32": 0.999, "int8": 0.98}
PACKAGES = {"onnx": "onnxruntime", "openvino": "openvino"}


class RuntimeUnavailableError(RuntimeError):
    """An export cannot be used here; the message says why."""


@dataclass
class ExportRecord:
    """The JSON written beside an exported model: what it is, what it is bound to, how it did."""

    fingerprint: str  # of the checkpoint it was made from
    kind: str  # 'embedder' or 'classifier'
    runtime: str  # 'onnx' or 'openvino'
    precision: str  # 'fp32' or 'int8'
    model_file: str  # name beside the record (.onnx, or .xml with its .bin)
    sha256: str  # of the model file(s), so a changed file is refused
    image_size: int
    output_dim: int
    parity: dict[str, Any] = field(default_factory=dict)  # images, mean/min cosine, threshold
    speed: dict[str, Any] = field(default_factory=dict)  # img/s of export and torch, same run
    calibration: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    created: str = ""

    @property
    def name(self) -> str:
        return f"{self.runtime}-{self.precision}"

    @property
    def passed(self) -> bool:
        return bool(self.parity.get("passed", False))

    @property
    def speedup(self) -> float:
        """Export img/s over torch img/s, both measured in the export's run (0 if unmeasured)."""
        ours, torch_rate = self.speed.get("images_per_s"), self.speed.get("torch_images_per_s")
        return float(ours) / float(torch_rate) if ours and torch_rate else 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def read(cls, path: Path) -> ExportRecord:
        data = json.loads(Path(path).read_text())
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def exports_dir(checkpoint_path: Path) -> Path:
    """Where the exports of a checkpoint live: `<stem>.exports/` beside it."""
    checkpoint_path = Path(checkpoint_path)
    return checkpoint_path.parent / f"{checkpoint_path.stem}.exports"


def model_files(record: ExportRecord, folder: Path) -> list[Path]:
    """The files whose bytes the record's SHA-256 covers."""
    main = folder / record.model_file
    return [main, main.with_suffix(".bin")] if record.runtime == "openvino" else [main]


def files_sha256(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


Runner = Callable[[np.ndarray], np.ndarray]


class OnnxRunner:
    """An ONNX Runtime CPU session: B x 3 x H x W float32 -> B x D float32."""

    def __init__(self, path: Path, threads: int) -> None:
        ort = importlib.import_module("onnxruntime")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(batch, np.float32)})
        return np.asarray(out[0], dtype=np.float32)


class OpenVinoRunner:
    """An OpenVINO CPU model compiled for latency. What is not int8 runs in f32, for int8 models
    too: OpenVINO would otherwise pick bf16 on CPUs that have it, which is not the checked model
    (and was slower: on a Xeon with AVX-512 bf16 but no AMX, the default embedder in bf16 ran at
    0.66x its f32 speed), and OpenVINO 2026.4.1 could not compile an int8 QDQ graph in bf16 at
    all on a Xeon with AMX ("No suitable implementations")."""

    def __init__(self, path: Path, threads: int, precision: str) -> None:
        ov = importlib.import_module("openvino")
        core = ov.Core()
        config: dict[str, Any] = {
            "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32",
        }
        self.precision = precision
        self.compiled = core.compile_model(str(path), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self._lock = threading.Lock()  # one infer request: one batch at a time

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            result = self.request.infer([np.ascontiguousarray(batch, np.float32)])
            return np.array(result[self.compiled.output(0)], dtype=np.float32)


def open_runner(record: ExportRecord, folder: Path, threads: int) -> Runner:
    """Load an exported model after checking its package is installed and its files are the
    ones that passed the parity check; RuntimeUnavailableError with the reason otherwise."""
    package = PACKAGES.get(record.runtime)
    if package is None:
        raise RuntimeUnavailableError(f"unknown runtime {record.runtime!r}")
    try:
        importlib.import_module(package)
    except ImportError as exc:
        raise RuntimeUnavailableError(f"{package} is not installed ({exc})") from None
    files = model_files(record, folder)
    missing = [p.name for p in files if not p.is_file()]
    if missing:
        raise RuntimeUnavailableError(f"{record.name}: missing {', '.join(missing)} in {folder}")
    if files_sha256(files) != record.sha256:
        raise RuntimeUnavailableError(
            f"{record.name}: {record.model_file} changed since its parity check (SHA-256 differs)"
        )
    try:
        if record.runtime == "onnx":
            return OnnxRunner(files[0], threads)
        return OpenVinoRunner(files[0], threads, record.precision)
    except Exception as exc:  # a broken file or runtime: say so, never crash the caller
        raise RuntimeUnavailableError(f"{record.name}: cannot load ({exc})") from exc


@dataclass
class RuntimeChoice:
    """The runtime picked for a checkpoint: a loaded runner (None: torch) and why."""

    name: str  # 'torch', 'onnx-fp32', 'openvino-int8', ...
    runner: Runner | None
    reason: str
    record: ExportRecord | None = None


def read_records(checkpoint_path: Path) -> tuple[list[ExportRecord], list[str]]:
    """The export records beside a checkpoint, and a note for each unreadable one."""
    folder = exports_dir(checkpoint_path)
    records, notes = [], []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            records.append(ExportRecord.read(path))
        except (OSError, ValueError, TypeError) as exc:
            notes.append(f"{path.name}: unreadable record ({exc})")
    return records, notes


def choose_runtime(
    checkpoint_path: Path, fingerprint: str, wanted: str, threads: int, on_gpu: bool = False
) -> RuntimeChoice:
    """Apply `wanted` (RSIR_RUNTIME): 'torch'; 'onnx' or 'openvino' (the fastest passing export
    of that runtime); 'auto' (the fastest passing export, if faster than torch in its own run;
    torch on a GPU). Whatever cannot be used falls back to torch, and the reason says why."""
    if wanted not in RUNTIME_CHOICES:
        raise ValueError(f"unknown runtime {wanted!r}; choose one of {list(RUNTIME_CHOICES)}")
    if wanted == "torch":
        return RuntimeChoice("torch", None, "RSIR_RUNTIME=torch")
    if on_gpu and wanted == "auto":
        return RuntimeChoice("torch", None, "a CUDA device: torch runs on the GPU")
    records, problems = read_records(checkpoint_path)
    candidates = []
    for record in records:
        if wanted != "auto" and record.runtime != wanted:
            continue
        if record.kind != "embedder":
            continue
        if record.fingerprint != fingerprint:
            problems.append(
                f"{record.name}: made for model {record.fingerprint}, not {fingerprint}"
            )
        elif not record.passed:
            problems.append(f"{record.name}: failed its parity check ({record.parity})")
        else:
            candidates.append(record)
    if wanted == "auto":
        candidates = [r for r in candidates if r.speedup > 1.0]
    for record in sorted(candidates, key=lambda r: r.speedup, reverse=True):
        try:
            runner = open_runner(record, exports_dir(checkpoint_path), threads)
        except RuntimeUnavailableError as exc:
            problems.append(str(exc))
            continue
        why = f"{record.speedup:.1f}x torch at export" if record.speedup else "as asked"
        return RuntimeChoice(record.name, runner, f"RSIR_RUNTIME={wanted}: {why}", record)
    if not problems:
        problems.append(
            f"no {'' if wanted == 'auto' else wanted + ' '}export faster than torch in "
            f"{exports_dir(checkpoint_path)} (rsir export)"
        )
    return RuntimeChoice("torch", None, f"RSIR_RUNTIME={wanted}: torch, " + "; ".join(problems))
