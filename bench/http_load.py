"""Benchmark HTTP query-by-image under load: `rsir serve` on 127.0.0.1 with a real UCM index.

Why: the service's promise is that concurrent queries are batched into one forward pass, so
throughput grows with the number of clients while latency stays bounded. This measures it the
way a user meets it: real JPEG uploads over HTTP to a real `rsir serve` subprocess (in-process
worker, embedded SQLite, FAISS Flat) holding an index of all UCM images.

For each worker configuration (batched: RSIR_BATCH_MAX_SIZE=16, and batch size 1) and each
concurrency (1, 8, 32 clients, httpx async, keep-alive) it sends a fixed number of requests and
reports throughput, p50/p95/p99 latency, and the server's mean batch size (from /metrics). In the
same run it times the bare work of one query in this process (decode + embed + FAISS + DB rows,
no HTTP) and reports end-to-end p50 / bare p50. Every request must be answered with k hits: the
script exits non-zero otherwise (after writing the report, with the failures in it).

The model: `--model default` (the default) is what a new install serves, the pretrained default
embedder (`model.backbones.default_backbone()`, ImageNet weights, dual attention + GeM at its
native size), exported by `rsir export`'s functions to ONNX Runtime and OpenVINO (fp32, parity
checked); `--model r18-random` is the small seeded ResNet-18 at 96 px of earlier runs;
`--checkpoint` names a trained one. `--runtimes torch auto` runs one server per runtime and
batch size side by side (RSIR_RUNTIME), so the default runtime is measured beside torch in the
same run.

Usage::

    .venv/bin/python bench/http_load.py                       # full run, bench/results/http_load.*
    .venv/bin/python bench/http_load.py --quick --out /tmp    # smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
DEFAULT_DATA_ROOT = REPO.parent / "shared" / "data"
UCM_SUBDIR = Path("UCMerced_LandUse") / "Images"
sys.path.insert(0, str(REPO))  # run as a script: bench.common importable
HOST = "127.0.0.1"  # never anything else: the benchmark must not leave this machine


@dataclass
class LevelResult:
    """One concurrency level against one server configuration."""

    concurrency: int
    requests: int
    ok: int
    failed: int
    wall_s: float
    throughput_rps: float
    latency_ms: dict[str, float]
    server_batches: int
    server_mean_batch: float | None
    server_request_mean_ms: float | None  # the server's own time per POST /search (its metrics)
    server_batch_mean_ms: float | None  # one batched forward pass + FAISS search
    load_average_1m: list[float] = field(default_factory=list)  # at the start of each round
    failures: list[str] = field(default_factory=list)


@dataclass
class ConfigResult:
    """All levels of one worker configuration."""

    name: str
    runtime: str  # RSIR_RUNTIME of the server
    resolved_runtime: str  # what it ran: 'torch', 'openvino-fp32', ...
    batch_max_size: int
    batch_max_wait_ms: float
    startup_s: float
    levels: list[LevelResult]
    e2e_p50_over_bare_p50: float | None = None


def percentiles(values_s: list[float]) -> dict[str, float]:
    """p50/p95/p99/mean/max in milliseconds (linear interpolation, as numpy does)."""
    if not values_s:
        return {}
    ms = np.asarray(values_s) * 1000.0
    return {
        "p50": round(float(np.percentile(ms, 50)), 2),
        "p95": round(float(np.percentile(ms, 95)), 2),
        "p99": round(float(np.percentile(ms, 99)), 2),
        "mean": round(float(ms.mean()), 2),
        "max": round(float(ms.max()), 2),
    }


def free_port() -> int:
    """A port of 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------------------- set-up
def make_random_checkpoint(path: Path, image_size: int, classes: list[str]) -> Path:
    """A seeded, randomly initialised ResNet-18 embedder (no weights can be downloaded here)."""
    import torch

    from model.checkpoint import embedder_checkpoint, save_checkpoint
    from model.embedder import EmbedderConfig, build_embedder
    from model.transforms import Preprocessing

    torch.manual_seed(0)
    net, init = build_embedder(EmbedderConfig(backbone="resnet18"), pretrained=False)
    net.eval()
    ckpt = embedder_checkpoint(net, Preprocessing(image_size=image_size), classes, init, "ucm")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(ckpt, path)
    return path


def make_default_checkpoint(
    path: Path, classes: list[str], data: Path, calibration: Path | None = None
) -> Path:
    """The pretrained default embedder as a new install has it, with its ONNX Runtime and
    OpenVINO exports (fp32, and int8 calibrated on `calibration` when given; parity-checked on
    real images) beside it, as `rsir export` makes them."""
    from model.backbones import default_backbone
    from model.checkpoint import embedder_checkpoint, save_checkpoint
    from model.embedder import EmbedderConfig, build_embedder
    from model.export import export_checkpoint
    from model.runtimes import EXPORT_RUNTIMES
    from model.transforms import Preprocessing

    backbone = default_backbone()
    net, init = build_embedder(EmbedderConfig(backbone=backbone), pretrained=True)
    ckpt = embedder_checkpoint(
        net.eval(), Preprocessing.for_backbone(backbone), classes, init, "ucm"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(ckpt, path)
    for runtime in EXPORT_RUNTIMES:
        export_checkpoint(path, runtime, parity_dir=data)
        if calibration is not None:
            export_checkpoint(
                path, runtime, int8=True, calibration_dir=calibration, parity_dir=data
            )
    return path


def build_index(source: Path, checkpoint: Path, index_dir: Path) -> dict[str, Any]:
    """Index every UCM image (a re-run finds them indexed and adds nothing)."""
    from indexer.options import IndexOptions
    from indexer.pipeline import index_source

    options = IndexOptions(index_dir=index_dir, batch_size=32, num_workers=1, device="cpu")
    started = time.perf_counter()
    summary = index_source(source, checkpoint, options)
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "added": summary.added,
        "already_indexed": summary.skipped_existing,
        "total": summary.index_total,
        "failed": len(summary.failed) + summary.corrupt,
    }


def query_payloads(source: Path, count: int) -> list[tuple[str, bytes]]:
    """`count` real UCM JPEGs spread over all classes, read once into memory."""
    files = sorted(source.glob("*/*.jpg"))
    step = max(1, len(files) // count)
    return [(p.name, p.read_bytes()) for p in files[::step][:count]]


def bare_query_times(
    index_dir: Path,
    checkpoint: Path,
    payloads: list[tuple[str, bytes]],
    k: int,
    repeats: int,
    runtime: str = "torch",
) -> list[float]:
    """Seconds of decode + embed + FAISS + DB rows for one image, no HTTP, in this process.

    Run on a thread of its own, as the server's batcher runs its forward passes: on two shared
    cores, torch's OpenMP team on the main thread was 5 to 15 times slower under load, which
    would make the ratio to end-to-end latency meaningless.
    """
    from indexer.search import Searcher
    from model.imageio import decode_image

    searcher = Searcher.open(index_dir, checkpoint_path=checkpoint, device="cpu", runtime=runtime)
    times: list[float] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for i in range(repeats + 5):
                _, data = payloads[i % len(payloads)]
                started = time.perf_counter()
                hits = searcher.search_images([decode_image(data)], k)[0]
                elapsed = time.perf_counter() - started
                if len(hits) != k:
                    raise RuntimeError(f"bare search returned {len(hits)} hits, expected {k}")
                if i >= 5:  # the first few warm up allocators and caches
                    times.append(elapsed)
        except BaseException as exc:  # re-raised in the caller
            errors.append(exc)

    thread = threading.Thread(target=work, name="bare-query")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return times


# ---------------------------------------------------------------------------- server
class Server:
    """`rsir serve` as a subprocess on 127.0.0.1 with the given settings."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        command = [sys.executable, "-c", "from rsir.cli import main; main()", "serve",
                   "--host", HOST, "--port", str(self.port)]  # fmt: skip
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 300.0) -> float:
        """Seconds until /ready answered 200."""
        started = time.perf_counter()
        last = "no answer"
        while time.perf_counter() - started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rsir serve exited:\n{self.log.read_text()[-3000:]}")
            try:
                response = httpx.get(f"{self.url}/ready", timeout=5.0)
                if response.status_code == 200:
                    return time.perf_counter() - started
                last = f"{response.status_code} {response.text[:300]}"
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.25)
        raise RuntimeError(f"rsir serve not ready after {timeout} s: {last}")

    def counters(self) -> dict[str, float]:
        """Sums and counts of the server's own histograms: search batch sizes, batch (forward +
        FAISS) seconds, and the seconds it spent on POST /search requests."""
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(f"{self.url}/metrics", timeout=10.0).text
        wanted = {
            ("rsir_batch_size", "batcher", "search"): "batch",
            ("rsir_batch_duration_seconds", "batcher", "search"): "batch_s",
            ("rsir_http_request_duration_seconds", "route", "/search"): "request_s",
        }
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                for (name, label, value), key in wanted.items():
                    if family.name != name or sample.labels.get(label) != value:
                        continue
                    if sample.name.endswith("_sum"):
                        out[key + "_sum"] = out.get(key + "_sum", 0.0) + sample.value
                    elif sample.name.endswith("_count"):
                        out[key + "_count"] = out.get(key + "_count", 0.0) + sample.value
        return out

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


# ---------------------------------------------------------------------------- load
async def _load(
    url: str, payloads: list[tuple[str, bytes]], concurrency: int, n_requests: int, k: int
) -> tuple[list[float], list[str], float]:
    """`concurrency` clients share `n_requests` POST /search; latencies, failures, wall time."""
    latencies: list[float] = []
    failures: list[str] = []
    counter = itertools.count()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300.0, limits=limits) as client:

        async def one_client() -> None:
            while (i := next(counter)) < n_requests:
                name, data = payloads[i % len(payloads)]
                started = time.perf_counter()
                try:
                    response = await client.post(
                        "/search",
                        files={"image": (name, data, "image/jpeg")},
                        data={"k": str(k)},
                    )
                    elapsed = time.perf_counter() - started
                    if response.status_code != 200:
                        failures.append(f"HTTP {response.status_code}: {response.text[:200]}")
                    elif len(response.json()["hits"]) != k:
                        failures.append(f"{len(response.json()['hits'])} hits instead of {k}")
                    else:
                        latencies.append(elapsed)
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))

        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return latencies, failures, wall


@dataclass
class Sample:
    """One round of one level against one server: raw figures, aggregated later."""

    latencies: list[float]
    failures: list[str]
    wall_s: float
    counters: dict[str, float]  # differences over the round
    load_1m: float


def run_round(
    server: Server, payloads: list[tuple[str, bytes]], concurrency: int, n_requests: int, k: int
) -> Sample:
    """One round of a level, with the server's batch sizes over exactly that round."""
    load_1m = os.getloadavg()[0]
    before = server.counters()
    latencies, failures, wall = asyncio.run(_load(server.url, payloads, concurrency, n_requests, k))
    after = server.counters()
    delta = {key: after[key] - before.get(key, 0.0) for key in after}
    return Sample(latencies, failures, wall, delta, load_1m)


def aggregate(concurrency: int, requests: int, samples: list[Sample]) -> LevelResult:
    """The level's figures over all its rounds (throughput = answered / time spent sending)."""
    latencies = [x for sm in samples for x in sm.latencies]
    failures = [x for sm in samples for x in sm.failures]
    wall = sum(sm.wall_s for sm in samples)

    def total(key: str) -> float:
        return sum(sm.counters.get(key, 0.0) for sm in samples)

    def mean_ms(key: str) -> float | None:
        n = total(key + "_count")
        return round(1000.0 * total(key + "_sum") / n, 2) if n else None

    batches = total("batch_count")
    return LevelResult(
        concurrency=concurrency,
        requests=requests,
        ok=len(latencies),
        failed=requests - len(latencies),
        wall_s=round(wall, 3),
        throughput_rps=round(len(latencies) / wall, 2) if wall > 0 else 0.0,
        latency_ms=percentiles(latencies),
        server_batches=int(batches),
        server_mean_batch=round(total("batch_sum") / batches, 2) if batches else None,
        server_request_mean_ms=mean_ms("request_s"),
        server_batch_mean_ms=mean_ms("batch_s"),
        load_average_1m=[round(sm.load_1m, 2) for sm in samples],
        failures=failures[:10],
    )


# ---------------------------------------------------------------------------- report
def machine() -> dict[str, Any]:
    """The machine, and how busy it was (the cores are shared with other work)."""
    from model.machine import machine_info

    info = machine_info()
    info["load_average_1_5_15"] = [round(x, 2) for x in os.getloadavg()]
    import torch

    info["torch_threads"] = torch.get_num_threads()
    return info


def level(config: dict[str, Any], concurrency: int) -> dict[str, Any] | None:
    """The level of `config` measured with `concurrency` clients, if it was."""
    return next((lv for lv in config["levels"] if lv["concurrency"] == concurrency), None)


def ratio_lines(report: dict[str, Any]) -> list[str]:
    """Each runtime against torch at the same batch size: single-client p50 and the throughput
    at the highest concurrency (issue 9's HTTP figures), and batched against batch 1."""
    configs = report["configs"]
    top = max(lv["concurrency"] for lv in configs[0]["levels"])
    lines: list[str] = []
    torch_by_bs = {c["batch_max_size"]: c for c in configs if c["runtime"] == "torch"}
    for config in configs:
        base = torch_by_bs.get(config["batch_max_size"])
        if base is None or base is config:
            continue
        one, one_base = level(config, 1), level(base, 1)
        many, many_base = level(config, top), level(base, top)
        parts = []
        if one and one_base and one["latency_ms"] and one_base["latency_ms"]:
            parts.append(
                f"p50 at 1 client {one['latency_ms']['p50']} ms against torch's "
                f"{one_base['latency_ms']['p50']} ms "
                f"({one_base['latency_ms']['p50'] / one['latency_ms']['p50']:.2f}x lower)"
            )
        if many and many_base and many_base["throughput_rps"]:
            parts.append(
                f"throughput at {top} clients {many['throughput_rps']} req/s against "
                f"{many_base['throughput_rps']} "
                f"({many['throughput_rps'] / many_base['throughput_rps']:.2f}x)"
            )
        lines.append(f"- {config['name']} vs {base['name']}: " + "; ".join(parts) + ".")
    for config in configs:
        if config["batch_max_size"] <= 1:
            continue
        single = next(
            (c for c in configs if c["runtime"] == config["runtime"] and c["batch_max_size"] == 1),
            None,
        )
        if single is None:
            continue
        for lv_b, lv_1 in zip(config["levels"], single["levels"], strict=True):
            if lv_1["throughput_rps"]:
                lines.append(
                    f"- {config['name']} over batch 1, {lv_b['concurrency']} clients: "
                    f"{lv_b['throughput_rps'] / lv_1['throughput_rps']:.2f}x throughput"
                )
    return lines


def markdown(report: dict[str, Any]) -> str:
    """The human-readable report."""
    m = report["machine"]
    model = report["model"]
    bare = "; ".join(
        f"{rt} ({b['runtime']}): p50 {b['latency_ms']['p50']} ms, p95 {b['latency_ms']['p95']} ms"
        f" over {b['n']} queries"
        for rt, b in report["bare"].items()
    )
    lines = [
        "# HTTP search under load",
        "",
        f"Run {report['date']} by `bench/http_load.py`"
        f" ({'quick smoke run' if report['quick'] else 'full run'}).",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, GPU: {m['gpu']};"
        f" Python {m['python']}, torch {m['torch']} ({m['torch_threads']} threads);"
        f" load average at start {m['load_average_1_5_15']} (cores shared with other work).",
        f"- Model: {model['backbone']} + dual attention + {model['pooling']}, {model['image_size']}"
        f" px, init `{model['init']}`, fingerprint `{model['fingerprint']}`"
        f" ({model['source']}).",
        f"- Data: {report['index']['total']} UCM images (all of {report['data']}), FAISS Flat"
        f" (inner product), SQLite metadata; index built in {report['index']['seconds']} s"
        f" ({report['index']['added']} added this run).",
        f"- Server: `rsir serve` on {HOST}, in-process worker, device cpu, RSIR_RUNTIME as each"
        " row says (`auto`: the fastest export that passed its parity check; the name in"
        " brackets is what ran); clients: httpx async in this process, keep-alive, one"
        f" connection per client; `POST /search` with a real UCM JPEG (~{report['query_kib']}"
        f" KiB) and k={report['k']}.",
        f"- Bare query (decode + embed + FAISS + DB rows of one image, no HTTP, in the benchmark"
        f" process, on a thread as the server's batcher): {bare}.",
        f"- All servers run side by side; every level is measured in {report['rounds']}"
        " interleaved rounds (one server after the other; the bare queries just before the"
        " single-client rounds), so the load of other work on the shared cores falls on all."
        f" Load average at the end: {report['load_average_end']}.",
        "",
        "| worker | clients | requests | ok | failed | throughput (req/s) | p50 ms | p95 ms"
        " | p99 ms | mean server batch | server ms per request | ms per batch"
        " | load (1 min) per round |",
        "| --- " + "| ---: " * 11 + "| --- |",
    ]
    for config in report["configs"]:
        for lv in config["levels"]:
            lat = lv["latency_ms"]
            lines.append(
                f"| {config['name']} | {lv['concurrency']} | {lv['requests']} |"
                f" {lv['ok']} | {lv['failed']} | {lv['throughput_rps']} |"
                f" {lat.get('p50', '-')} | {lat.get('p95', '-')} | {lat.get('p99', '-')} |"
                f" {'-' if lv['server_mean_batch'] is None else lv['server_mean_batch']} |"
                f" {lv['server_request_mean_ms']} | {lv['server_batch_mean_ms']} |"
                f" {', '.join(str(x) for x in lv['load_average_1m'])} |"
            )
    lines += ["", "Against torch and against batch size 1, same run:", "", *ratio_lines(report)]
    lines += ["", "End-to-end p50 with 1 client over the bare p50 of the same runtime (HTTP,"
              " multipart, upload checks, batcher hand-off and JSON on top of the same work):",
              ""]  # fmt: skip
    for config in report["configs"]:
        single = level(config, 1)
        detail = ""
        if single is not None:
            detail = (
                f" (client p50 {single['latency_ms'].get('p50')} ms; the server's own mean per"
                f" request {single['server_request_mean_ms']} ms, of which one forward pass +"
                f" FAISS {single['server_batch_mean_ms']} ms)"
            )
        lines.append(f"- {config['name']}: {config['e2e_p50_over_bare_p50']}x{detail}")
    verdict = "every request answered with k hits" if report["all_ok"] else "FAILURES: see JSON"
    lines += ["", f"Result: {report['total_ok']} of {report['total_requests']} requests answered;"
              f" {verdict}.", ""]  # fmt: skip
    return "\n".join(lines)


# ---------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--work-dir", type=Path, default=REPO / "var" / "bench" / "http_load")
    parser.add_argument("--checkpoint", type=Path, default=None, help="a trained embedder")
    parser.add_argument("--model", choices=["default", "r18-random"], default="default")
    parser.add_argument("--image-size", type=int, default=96, help="r18-random only")
    parser.add_argument("--runtimes", nargs="+", default=["torch", "auto"], help="RSIR_RUNTIME")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=128, help="requests per level")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 1])
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--bare-repeats", type=int, default=60, help="over all rounds")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds per level")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--quick", action="store_true", help="few requests; a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.bare_repeats = 24, 10

    source = (args.data_root / UCM_SUBDIR).resolve()
    if not source.is_dir():
        print(f"no UCM images at {source} (use --data-root)", file=sys.stderr)
        return 2
    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    info = machine()

    classes = sorted(p.name for p in source.iterdir() if p.is_dir())
    if args.checkpoint is None and args.model == "r18-random":
        checkpoint = work / f"embedder-r18-{args.image_size}px-random-seed0.pt"
        if not checkpoint.is_file():
            make_random_checkpoint(checkpoint, args.image_size, classes)
        model_source = "seeded random initialisation, made by this script"
    elif args.checkpoint is None:
        checkpoint = work / "embedder-default-pretrained.pt"
        if not checkpoint.is_file():
            calibration = args.data_root / "NWPU-RESISC12"  # int8: images it does not search
            make_default_checkpoint(
                checkpoint, classes, source, calibration if calibration.is_dir() else None
            )
        model_source = "the pretrained default embedder, exported by this script"
    else:
        checkpoint = args.checkpoint.resolve()
        model_source = f"checkpoint {checkpoint.name}"
    from model.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    index_dir = work / f"index-{ckpt.fingerprint[:12]}"
    print(f"indexing {source} into {index_dir} ...", flush=True)
    index = build_index(source, checkpoint, index_dir)
    print(f"index: {index}", flush=True)
    payloads = query_payloads(source, 64)

    env_base = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("RSIR_")  # the benchmark's settings only, none from the shell
    }
    env_base.update(
        RSIR_INDEX_DIR=str(index_dir),
        RSIR_CHECKPOINT=str(checkpoint),
        RSIR_DATA_ROOT=str(args.data_root.resolve()),
        RSIR_DEVICE="cpu",
        RSIR_LOG_LEVEL="WARNING",
        RSIR_BATCH_MAX_WAIT_MS=str(args.batch_wait_ms),
    )
    # Both servers run side by side (an idle one costs nothing) and the measurements are
    # interleaved in rounds: config A then B at each level, the bare query just before the
    # single-client level. The cores are shared with other work, so this spreads its noise
    # over both configurations instead of letting it land on one of them.
    keys = [(rt, bs) for rt in args.runtimes for bs in args.batch_sizes]
    from bench.common import resolved_runtime

    resolved = {rt: resolved_runtime(checkpoint, rt) for rt in args.runtimes}
    names = {
        (rt, bs): f"{rt} ({resolved[rt]}), " + (f"batched (max {bs})" if bs > 1 else "batch 1")
        for rt, bs in keys
    }
    servers: dict[tuple[str, int], Server] = {}
    startup: dict[tuple[str, int], float] = {}
    samples: dict[tuple[tuple[str, int], int], list[Sample]] = {}
    bare: dict[str, list[float]] = {rt: [] for rt in args.runtimes}
    per_round = max(1, args.requests // args.rounds)
    try:
        for rt, bs in keys:
            with tempfile.NamedTemporaryFile(
                prefix="rsir-serve-", suffix=".log", delete=False
            ) as f:
                log = Path(f.name)
            server_env = {**env_base, "RSIR_BATCH_MAX_SIZE": str(bs), "RSIR_RUNTIME": rt}
            servers[(rt, bs)] = Server(server_env, log)
        for key, server in servers.items():
            startup[key] = server.wait_ready()
            run_round(server, payloads, 8, 16, args.k)  # warm-up, not reported
        for round_no in range(args.rounds):
            for concurrency in args.concurrency:
                if concurrency == 1:
                    for rt in args.runtimes:
                        bare[rt] += bare_query_times(
                            index_dir, checkpoint, payloads, args.k,
                            args.bare_repeats // args.rounds, rt,
                        )  # fmt: skip
                for key, server in servers.items():
                    sample = run_round(server, payloads, concurrency, per_round, args.k)
                    samples.setdefault((key, concurrency), []).append(sample)
                    done = f"{len(sample.latencies)} ok in {sample.wall_s:.1f} s"
                    print(f"round {round_no + 1}/{args.rounds}, {names[key]}, {concurrency}"
                          f" clients: {done}, failed {len(sample.failures)},"
                          f" load {sample.load_1m:.1f}", flush=True)  # fmt: skip
    finally:
        for server in servers.values():
            server.stop()

    bare_p50 = {rt: statistics.median(times) for rt, times in bare.items()}
    configs: list[ConfigResult] = []
    for rt, bs in keys:
        levels = [
            aggregate(c, per_round * args.rounds, samples[((rt, bs), c)]) for c in args.concurrency
        ]
        config = ConfigResult(
            names[(rt, bs)], rt, resolved[rt], bs, args.batch_wait_ms, round(startup[(rt, bs)], 2),
            levels,
        )  # fmt: skip
        single = next((lv for lv in levels if lv.concurrency == 1), None)
        if single is not None and single.latency_ms:
            config.e2e_p50_over_bare_p50 = round(
                single.latency_ms["p50"] / (bare_p50[rt] * 1000.0), 2
            )
        configs.append(config)

    total_requests = sum(lv.requests for c in configs for lv in c.levels)
    total_ok = sum(lv.ok for c in configs for lv in c.levels)
    report: dict[str, Any] = {
        "benchmark": "http_load",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": info,
        "model": {
            "backbone": ckpt.config.get("backbone"),
            "pooling": ckpt.config.get("pooling"),
            "attention": ckpt.config.get("attention"),
            "image_size": ckpt.preprocessing.image_size,
            "init": ckpt.init,
            "fingerprint": ckpt.fingerprint,
            "source": model_source,
        },
        "data": str(UCM_SUBDIR),
        "index": index,
        "k": args.k,
        "query_kib": round(statistics.mean(len(d) for _, d in payloads) / 1024, 1),
        "bare": {
            rt: {
                "what": "decode + embed + FAISS + DB rows of one image, no HTTP, benchmark process",
                "runtime": resolved[rt],
                "n": len(times),
                "latency_ms": percentiles(times),
                "measured": "on a thread of its own, just before each single-client round",
            }
            for rt, times in bare.items()
        },
        "rounds": args.rounds,
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "configs": [asdict(c) for c in configs],
        "total_requests": total_requests,
        "total_ok": total_ok,
        "all_ok": total_ok == total_requests,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "http_load.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "http_load.md").write_text(markdown(report))
    print(markdown(report))
    if not report["all_ok"]:
        print(f"FAILED: {total_requests - total_ok} requests not answered", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
