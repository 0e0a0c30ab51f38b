"""Embedding runtimes: torch eager (the baseline, same run) against torch channels_last, ONNX
Runtime and OpenVINO (fp32 and int8) for the default pretrained embedder and ResNet-50 + dual
attention: images/s at batch 1 and 32, mean cosine to torch on real images, and the UCM split
mAP of the descriptors each runtime gives (a FAISS inner-product index of the train split
searched by the test split, indexer/evaluate.py's retrieval_metrics).

Each runtime is exported once with rsir export's functions: the fp32 ONNX file (ONNX Runtime and
OpenVINO fp32), ONNX Runtime's int8 QDQ graph, and NNCF's int8 OpenVINO model. torch.compile
(inductor, static shapes) compiles one graph for batch 1 and one for batch 32; every batch is
padded to 32 so that no third shape is compiled, and its compile time is reported.

Run: .venv/bin/python bench/embedding_runtimes.py [--per-class 100 --calibration 300]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script

from bench.common import DATA_ROOT, RESULTS, write_report
from indexer.evaluate import retrieval_metrics
from model.checkpoint import embedder_checkpoint, save_checkpoint
from model.cores import available_cores
from model.datasets import discover_dataset, limit_per_class, stratified_split
from model.embedder import Embedder, EmbedderConfig, build_embedder
from model.export import (
    cosine_rows,
    export_onnx,
    load_batch,
    quantize_int8,
    quantize_openvino_int8,
)
from model.machine import machine_info
from model.runtimes import PARITY_THRESHOLDS, OnnxRunner, OpenVinoRunner
from model.transforms import Preprocessing

DEFAULT_MODEL = "default (efficientnet_lite0 + attention + GeM)"
MODELS = {
    "default (efficientnet_lite0 + attention + GeM)": ("efficientnet_lite0", 224),
    "resnet50 + attention + GeM": ("resnet50", 224),
}


def rate(run: Any, batch: Any, passes: int) -> float:
    """Images/s: one warm-up, then the best of `passes` timed calls."""
    run(batch)
    best = float("inf")
    for _ in range(passes):
        started = time.perf_counter()
        run(batch)
        best = min(best, time.perf_counter() - started)
    return len(batch) / best


def embed_all(run: Any, tensors: torch.Tensor, numpy: bool) -> np.ndarray:
    """Descriptors of every image in batches of 32; the last batch is padded to 32 (and the
    padding dropped) so a shape-specialised runtime (torch.compile) sees one batch shape."""
    out = []
    for i in range(0, len(tensors), 32):
        chunk = tensors[i : i + 32]
        n = len(chunk)
        if n < 32:
            chunk = torch.cat([chunk, chunk[-1:].expand(32 - n, *chunk.shape[1:])])
        result = run(chunk.numpy() if numpy else chunk)
        out.append(np.asarray(result)[:n])
    return np.vstack(out).astype(np.float32)


def compiled(net: nn.Module, size: int) -> tuple[Any, float]:
    """torch.compile (inductor, static shapes) warmed for batch 32 and 1: the callable and the
    seconds both compilations took."""
    graph = torch.compile(net, dynamic=False)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return graph(x)

    started = time.perf_counter()
    for batch in (32, 1):
        run(torch.randn(batch, 3, size, size))
    return run, time.perf_counter() - started


def calibration_paths(ucm: Any, subset: Any, count: int) -> list[Path]:
    """int8 calibration images that are not measured: UCM images outside the measured subset,
    else (all of UCM measured) NWPU-RESISC12 images, class-balanced."""
    measured = set(subset.paths)
    spare = [p for p in ucm.paths if p not in measured]
    if len(spare) < count:
        nwpu = discover_dataset("nwpu", DATA_ROOT)
        spare = limit_per_class(nwpu, -(-count // len(nwpu.class_names))).paths
    step = max(1, len(spare) // count)
    return list(spare[::step][:count])


def measure_model(
    label: str, backbone: str, size: int, args: argparse.Namespace, work: Path
) -> list[dict[str, Any]]:
    torch.manual_seed(0)  # a backbone without ImageNet weights on disk: the same draw every run
    net, init = build_embedder(EmbedderConfig(backbone), pretrained=True)
    net.eval()
    pre = Preprocessing.for_backbone(backbone, size)
    ckpt_path = work / f"{backbone}.pt"
    save_checkpoint(embedder_checkpoint(net, pre, [], init, "none"), ckpt_path)
    from model.checkpoint import load_checkpoint

    ckpt = load_checkpoint(ckpt_path)
    ucm = discover_dataset("ucm", DATA_ROOT)
    subset = limit_per_class(ucm, args.per_class)
    tensors = load_batch(ckpt, subset.paths)
    labels = np.asarray(subset.labels)
    split = stratified_split(list(subset.labels), 0.8, 0)
    q, g = np.asarray(split.test), np.asarray(split.train)
    calibration = load_batch(ckpt, calibration_paths(ucm, subset, args.calibration))

    fp32, int8 = work / f"{backbone}-fp32.onnx", work / f"{backbone}-int8.onnx"
    ov_int8 = work / f"{backbone}-int8.xml"
    started = time.perf_counter()
    export_onnx(net, size, fp32)
    export_s = time.perf_counter() - started
    started = time.perf_counter()
    quantize_int8(fp32, int8, calibration)
    quant_s = time.perf_counter() - started
    started = time.perf_counter()
    quantize_openvino_int8(fp32, ov_int8, calibration)
    ov_quant_s = time.perf_counter() - started
    threads = available_cores()

    def torch_eager(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return net(x)

    cl_net: Embedder = build_embedder(EmbedderConfig(backbone), pretrained=False)[0]
    cl_net.load_state_dict(net.state_dict())
    cl_net = cl_net.eval().to(memory_format=torch.channels_last)

    def torch_cl(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return cl_net(x.contiguous(memory_format=torch.channels_last))

    runtimes: list[tuple[str, Any, bool]] = [
        ("torch eager fp32", torch_eager, False),
        ("torch channels_last fp32", torch_cl, False),
    ]
    compile_s: float | None = None
    if args.compile:
        compiled_run, compile_s = compiled(net, size)
        runtimes.append(("torch.compile fp32 (inductor)", compiled_run, False))
    runtimes += [
        ("ONNX Runtime fp32", OnnxRunner(fp32, threads), True),
        ("ONNX Runtime int8", OnnxRunner(int8, threads), True),
        ("OpenVINO fp32", OpenVinoRunner(fp32, threads, "fp32"), True),
        ("OpenVINO int8", OpenVinoRunner(ov_int8, threads, "int8"), True),
    ]
    rows: list[dict[str, Any]] = []
    reference = None if args.rates_only else embed_all(torch_eager, tensors, False)
    for name, run, numpy in runtimes:
        row: dict[str, Any] = {
            "model": label,
            "runtime": name,
            "mean_cosine_to_torch": None,
            "min_cosine_to_torch": None,
            "map": None,
            "compile_s": compile_s if name.startswith("torch.compile") else None,
        }
        if reference is not None:
            vectors = reference if name == "torch eager fp32" else embed_all(run, tensors, numpy)
            vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
            metrics = retrieval_metrics(
                vectors[q], labels[q], vectors[g], labels[g], ucm.class_names
            )
            cosines = cosine_rows(reference, vectors)
            row.update(
                mean_cosine_to_torch=float(cosines.mean()),
                min_cosine_to_torch=float(cosines.min()),
                map=float(metrics.map),
            )
        rows.append(row)
    # Speed in interleaved rounds (every runtime once per round, the best of the rounds kept),
    # so that other work on the shared cores penalises no runtime, the baseline least of all.
    batch32 = tensors[:32]
    for round_no in range(args.rounds):
        for row, (_, run, numpy) in zip(rows, runtimes, strict=True):
            b32 = batch32.numpy() if numpy else batch32
            for key, batch, passes in (
                ("images_per_s_batch32", b32, args.passes),
                ("images_per_s_batch1", b32[:1], args.passes * 4),
            ):
                row[key] = max(row.get(key, 0.0), rate(run, batch, passes))
            if round_no == args.rounds - 1:
                print(row, flush=True)
    base = rows[0]
    for row in rows:
        row["speedup_batch32"] = row["images_per_s_batch32"] / base["images_per_s_batch32"]
        row["latency_ratio_batch1"] = row["images_per_s_batch1"] / base["images_per_s_batch1"]
        row["map_minus_torch"] = None if row["map"] is None else row["map"] - base["map"]
        row.update(
            init=init,
            image_size=size,
            export_s=export_s,
            quantize_s=quant_s,
            openvino_quantize_s=ov_quant_s,
            calibration_images=len(calibration),
            subset_images=len(subset),
            queries=len(q),
            gallery=len(g),
        )
    return rows


def fmt(value: float | None, spec: str) -> str:
    """A figure, or '-' where this run did not measure it."""
    return "-" if value is None else format(value, spec)


def fill_parity_from_full_run(rows: list[dict[str, Any]]) -> str:
    """A speed-only run measures no descriptors: take each row's cosine and mAP from the last
    full run's JSON (same model and runtime), and say so in the report."""
    path = RESULTS / "embedding_runtimes.json"
    if not path.exists():
        return " No full run's JSON: cosine and mAP are not given."
    full = json.loads(path.read_text())
    measured = {(r["model"], r["runtime"]): r for r in full["rows"]}
    for row in rows:
        other = measured.get((row["model"], row["runtime"]))
        if other is not None and other.get("map") is not None:
            for key in ("mean_cosine_to_torch", "min_cosine_to_torch", "map", "map_minus_torch"):
                row[key] = other[key]
    return (
        f" Cosine and mAP columns: from the full run of {full['machine']['date']}"
        " (`embedding_runtimes.md`), same models, runtimes and images; this run measures speed."
    )


def default_choice(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The export `RSIR_RUNTIME=auto` would serve: the fastest at batch 32 of those that pass
    parity (model/runtimes.py PARITY_THRESHOLDS) and beat torch eager."""
    passing = [
        r
        for r in rows
        if r["runtime"].split()[0] in ("ONNX", "OpenVINO")
        and (r["mean_cosine_to_torch"] or 0.0) >= PARITY_THRESHOLDS[r["runtime"].split()[-1]]
        and r["speedup_batch32"] > 1.0
    ]
    return max(passing, key=lambda r: r["images_per_s_batch32"], default=None)


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    """One line per model: the default runtime's ratios against the goals, and int8's."""
    lines = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        best = default_choice(mine)
        if best is None:
            lines.append(f"- {model}: no export passes parity and beats torch; torch serves.")
            continue
        diffs = [abs(r["map_minus_torch"]) for r in mine if r["map_minus_torch"] is not None]
        worst_map = fmt(max(diffs, default=None), ".4f")
        int8 = [r for r in mine if r["runtime"].endswith("int8")]
        best_int8 = max(int8, key=lambda r: r["speedup_batch32"], default=None)
        lines.append(
            f"- {model}: the default runtime (`auto`) is {best['runtime']}: "
            f"{best['speedup_batch32']:.2f}x torch eager at batch 32 and "
            f"{best['latency_ratio_batch1']:.2f}x lower latency at batch 1 "
            + (
                "(goals: 5x and 3x); "
                if model == DEFAULT_MODEL
                else "(goal for this model: its fastest int8 >= 3x at batch 32); "
            )
            + f"mAP {fmt(best['map_minus_torch'], '+.4f')} "
            f"against torch; largest mAP difference of any runtime {worst_map} (goal 0.005)"
            + (
                f"; fastest int8: {best_int8['runtime']} {best_int8['speedup_batch32']:.2f}x "
                f"(mean cosine {fmt(best_int8['mean_cosine_to_torch'], '.4f')})"
                if best_int8
                else ""
            )
            + "."
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--per-class", type=int, default=100, help="UCM images a class (of 100)")
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure torch.compile (minutes of compiling per model on 2 cores)",
    )
    parser.add_argument(
        "--calibration", type=int, default=300, help="int8 calibration images (rsir export's)"
    )
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved speed rounds")
    parser.add_argument(
        "--rates-only",
        action="store_true",
        help="speed only (no mAP, no cosine): report embedding_runtimes_speed",
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(available_cores())
    load = os.getloadavg()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="rsir-runtimes-") as tmp:
        for label in args.models:
            backbone, size = MODELS[label]
            rows += measure_model(label, backbone, size, args, Path(tmp))
    machine = machine_info()
    parity_note = ""
    if args.rates_only:
        parity_note = fill_parity_from_full_run(rows)
    figures = {"rows": rows, "machine": machine, "threads": available_cores(), **vars(args)}
    title = "Embedding runtimes" + (": speed (interleaved rounds)" if args.rates_only else "")
    md = [
        f"# {title}: torch eager vs channels_last, torch.compile, ONNX Runtime, OpenVINO",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores ({available_cores()} threads used),"
        f" GPU: {machine['gpu']}; torch {machine['torch']}; date {machine['date']}. Load average "
        f"at the start {load[0]:.1f} and at the end {os.getloadavg()[0]:.1f} on "
        f"{machine['cores']} cores: with other jobs on the machine, absolute rates are low and "
        "noisy (batch 1 most of all); the ratios to torch eager come from the same run. Speed: "
        f"{args.rounds} interleaved rounds (every runtime once a round, the best round kept), "
        "so that a burst of other work penalises no runtime, the baseline least of all."
        + parity_note
        + (
            " torch.compile's compile seconds in a speed run may come from inductor's on-disk "
            "cache of an earlier run; the full run's are the cold figures."
            if args.rates_only
            else " Speed figures of a loaded run are unreliable whatever the rounds: "
            "`embedding_runtimes_speed.md` (--rates-only) measures speed alone."
        ),
        "",
        "Goals (issue 9): default embedder's default runtime >= 5x torch eager at batch 32 and "
        ">= 3x at batch 1; ResNet-50 + attention >= 3x (int8); mAP within 0.005 of torch.",
        "",
        f"Images: {rows[0]['subset_images']} UCM images ({args.per_class} a class), split "
        f"80/20 seed 0: {rows[0]['queries']} queries against a {rows[0]['gallery']}-image "
        "gallery (the split protocol of bench/retrieval.py); the initialisation is named in each "
        "row (no fine-tuning: the runtimes are compared on the same weights). "
        f"int8, calibrated on {rows[0]['calibration_images']} images not measured (UCM "
        "outside the subset, else NWPU-RESISC12): ONNX Runtime static QDQ (model/export.py "
        "quantize_int8: convolutions with their ReLU6/ReLU, those at the stem's resolution in "
        "float; per-channel weights, min-max ranges); OpenVINO: NNCF's post-training "
        "quantization of the OpenVINO model (quantize_openvino_int8: GeM, the attention's "
        "products and the stem-resolution convolutions in float). torch.compile: inductor, "
        "static shapes, one graph for batch 32 and one for batch 1 (every batch padded to 32); "
        "its compile time is in the last column.",
        "",
        "| model | runtime | img/s b32 | x eager b32 | img/s b1 | x eager b1 | mean cos | "
        "min cos | mAP | mAP - torch | compile s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *[
            f"| {r['model']} ({r['init'].split(':')[0]}, {r['image_size']} px) | {r['runtime']} | "
            f"{r['images_per_s_batch32']:.1f} | {r['speedup_batch32']:.2f} | "
            f"{r['images_per_s_batch1']:.1f} | {r['latency_ratio_batch1']:.2f} | "
            f"{fmt(r['mean_cosine_to_torch'], '.5f')} | {fmt(r['min_cosine_to_torch'], '.5f')} | "
            f"{fmt(r['map'], '.4f')} | {fmt(r['map_minus_torch'], '+.4f')} | "
            f"{'' if r['compile_s'] is None else format(r['compile_s'], '.0f')} |"
            for r in rows
        ],
        "",
        "## Against the goals",
        "",
        *verdicts(rows),
        "",
        "How the int8 graph came to pass parity (what was tried, with figures): "
        "`embedding_runtimes_int8.md`.",
        "",
    ]
    name = "embedding_runtimes_speed" if args.rates_only else "embedding_runtimes"
    write_report(name, figures, "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
