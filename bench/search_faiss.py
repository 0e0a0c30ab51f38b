"""Benchmark FAISS search for rsir descriptors: Flat vs IVF-PQ vs HNSW.

Why: rsir stores L2-normalised float32 2048-d descriptors and ranks by inner product. Choosing an
index means trading query latency, recall against exact search and memory per vector; this script
measures those on synthetic clustered unit vectors at the sizes a deployment will reach.

Per index it reports build/train time, add time, query latency (single query and batched),
recall@k against exact (Flat) search, bytes per vector of the serialised index and the speed
ratio to Flat measured in the same run. HNSW above ``--hnsw-max`` vectors is not built (hours on a
small machine): its add time and size are extrapolated from a measured prefix build and labelled
as such.

Usage::

    .venv/bin/python bench/search_faiss.py                   # 100k and 1M, results in bench/results
    .venv/bin/python bench/search_faiss.py --quick           # smoke run, results in /tmp
    .venv/bin/python bench/search_faiss.py --sizes 1000000 --hnsw-max 1000000 --threads 32
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

METRIC = faiss.METRIC_INNER_PRODUCT
RESULTS_PREFIX = Path(__file__).resolve().parent / "results" / "search_faiss"


@dataclass(frozen=True)
class MixtureSpec:
    """Parameters of the synthetic descriptor distribution (a mixture of clusters on the sphere).

    Centroids: unit vectors from a Gaussian in a rank-``centroid_rank`` subspace plus a shared
    mean direction (weight ``mean_weight``), so clusters are related to each other as scene
    classes are, and random pairs have a small positive cosine as CNN descriptors do. Why not
    independent random centroids: in 2048-d those are mutually orthogonal islands, and greedy
    graph search has no gradient between them (HNSW32 recall@10 at efSearch=128 on 30k vectors:
    0.69 with such centroids vs 0.99 with these), which real descriptor spaces do not show.

    Each vector = centroid (log-normal cluster weights) + Gaussian structured noise in a shared
    rank-``rank`` subspace (norm ~ ``sigma_struct``) + isotropic noise (norm ~ ``sigma_iso``),
    then L2-normalised. The low-rank part gives neighbourhoods a modest intrinsic dimension.
    The isotropic part is drawn as uniform int8 levels scaled to that norm: ~10x cheaper than
    Gaussian draws, and indistinguishable in 2048-d inner products (central limit).
    """

    dim: int = 2048
    centroids: int = 4096
    centroid_rank: int = 64
    mean_weight: float = 0.5
    rank: int = 32
    sigma_struct: float = 0.8
    sigma_iso: float = 0.5
    seed: int = 1234


@dataclass(frozen=True)
class Mixture:
    """The drawn mixture model: centroid matrix, structured-noise basis and cluster weights."""

    spec: MixtureSpec
    centroids: np.ndarray  # (C, d) float32, unit rows
    basis: np.ndarray  # (rank, d) float32, unit rows, scaled by sigma_struct / sqrt(rank)
    cum_weights: np.ndarray  # (C,) float64 cumulative cluster probabilities


@dataclass
class Config:
    """Everything the run depends on; stored in the JSON so a result can be reproduced."""

    sizes: list[int]
    queries: int
    k: int
    threads: int
    single_threads: int
    train: int
    chunk: int
    flat_factory: str
    ivf_factory: str
    hnsw_factory: str
    nprobe: list[int]
    ef_search: list[int]
    hnsw_max: int
    single_max: int
    single_budget_s: float
    out_prefix: str
    quick: bool
    note: str
    mixture: MixtureSpec = field(default_factory=MixtureSpec)


@dataclass
class Row:
    """One (size, index, search parameter) measurement, or an extrapolation/skip with a reason."""

    n: int
    index: str
    param: str
    status: str  # "measured" | "extrapolated" | "skipped"
    train_s: float | None = None
    add_s: float | None = None
    single_ms: float | None = None
    single_p95_ms: float | None = None
    single_n: int | None = None
    batched_ms: float | None = None
    batched_cpu_ms: float | None = None
    recall: float | None = None
    bytes_per_vector: float | None = None
    speedup_single: float | None = None
    speedup_batched: float | None = None
    note: str = ""


# --------------------------------------------------------------------------------------- data


def make_mixture(spec: MixtureSpec) -> Mixture:
    """Draw the mixture once from ``spec.seed`` so database, train and query sets share it."""
    rng = np.random.default_rng([spec.seed, 0])
    proj = rng.standard_normal((spec.centroid_rank, spec.dim), dtype=np.float32)
    proj /= np.linalg.norm(proj, axis=1, keepdims=True)
    mean = rng.standard_normal(spec.dim).astype(np.float32)
    mean /= np.linalg.norm(mean)
    cents = rng.standard_normal((spec.centroids, spec.centroid_rank), dtype=np.float32) @ proj
    cents /= np.linalg.norm(cents, axis=1, keepdims=True)
    cents += spec.mean_weight * mean
    cents /= np.linalg.norm(cents, axis=1, keepdims=True)
    basis = rng.standard_normal((spec.rank, spec.dim), dtype=np.float32)
    basis /= np.linalg.norm(basis, axis=1, keepdims=True)
    basis *= spec.sigma_struct / math.sqrt(spec.rank)
    # Unequal cluster sizes (log-normal weights), as scene classes are in real archives.
    w = rng.lognormal(0.0, 0.5, spec.centroids)
    return Mixture(spec, cents, basis, np.cumsum(w / w.sum()))


def sample(mix: Mixture, rng: np.random.Generator, out: np.ndarray, tmp: np.ndarray) -> None:
    """Fill ``out`` (m, d) float32 with unit vectors from the mixture; ``tmp`` is scratch.

    Why buffers: fresh 400 MB temporaries per chunk cost more than the arithmetic on a busy
    machine (page faults), so each stream reuses two buffers.
    """
    spec = mix.spec
    m = len(out)
    labels = np.searchsorted(mix.cum_weights, rng.random(m), side="right")
    labels = np.minimum(labels, spec.centroids - 1)
    # Uniform on -128..127 has mean -0.5 and std sqrt((256**2 - 1) / 12).
    scale = spec.sigma_iso / math.sqrt(spec.dim) / math.sqrt((256**2 - 1) / 12)
    np.multiply(rng.integers(-128, 128, out.shape, dtype=np.int8), np.float32(scale), out=out)
    out += 0.5 * scale
    np.take(mix.centroids, labels, axis=0, out=tmp)
    out += tmp
    np.matmul(rng.standard_normal((m, spec.rank), dtype=np.float32), mix.basis, out=tmp)
    out += tmp
    out /= np.sqrt(np.einsum("ij,ij->i", out, out))[:, None]


def stream(mix: Mixture, name: str, n: int, chunk: int) -> Iterator[np.ndarray]:
    """Yield ``n`` vectors in chunks, each chunk seeded by (seed, stream, size, chunk index).

    Why chunks: 1M x 2048 float32 is 8 GiB; generating it whole would double the peak memory
    next to the Flat index. Seeding per chunk keeps the data reproducible. The yielded array is
    a reused buffer: consume (FAISS add copies) or copy it before the next one.
    """
    tag = {"train": 1, "query": 2, "base": 3}[name]
    buf = np.empty((min(chunk, n), mix.spec.dim), dtype=np.float32)
    tmp = np.empty_like(buf)
    for i, start in enumerate(range(0, n, chunk)):
        m = min(chunk, n - start)
        rng = np.random.default_rng([mix.spec.seed, tag, n, i])
        sample(mix, rng, buf[:m], tmp[:m])
        yield buf[:m]


def take(mix: Mixture, name: str, n: int, chunk: int) -> np.ndarray:
    """A whole (small) set, e.g. training sample or queries."""
    return np.concatenate([x.copy() for x in stream(mix, name, n, chunk)])


# ------------------------------------------------------------------------------ measurements


def serialized_bytes(index: faiss.Index) -> int:
    """Size of ``faiss.serialize_index(index)`` without holding the bytes.

    Why: serialising a 1M x 2048 Flat index would allocate another 8 GiB; a counting writer
    gives the same number (checked against serialize_index on small indexes).
    """
    total = 0

    def count(buf: bytes) -> int:
        nonlocal total
        total += len(buf)
        return len(buf)

    writer = faiss.PyCallbackIOWriter(count, 1 << 22)
    faiss.write_index(index, writer)
    del writer  # flushes the last block
    if index.ntotal * index.d * 4 <= 256 << 20:
        assert total == len(faiss.serialize_index(index)), "counting writer disagrees"
    return total


def preallocate_flat(index: faiss.Index, n: int) -> None:
    """Reserve the Flat code storage for ``n`` vectors before chunked adds.

    Why: std::vector growth by doubling would transiently hold old + new buffers (about 12 GiB
    at 1M x 2048); resize up then down keeps the capacity, so the peak is the final 8 GiB.
    """
    inner = faiss.downcast_index(index.index if isinstance(index, faiss.IndexIDMap2) else index)
    if isinstance(inner, faiss.IndexFlat):
        inner.codes.resize(n * inner.code_size)
        inner.codes.resize(0)


def time_single(cfg: Config, index: faiss.Index, xq: np.ndarray) -> dict:
    """Per-query latency one query per call (interactive use), within a time budget.

    Runs on ``cfg.single_threads`` OpenMP threads (default 1, as a server answering concurrent
    requests would): for one query FAISS gains little from more threads, and on a shared
    machine their synchronisation costs milliseconds.
    """
    k, max_n, budget_s = cfg.k, cfg.single_max, cfg.single_budget_s
    faiss.omp_set_num_threads(cfg.single_threads)
    index.search(xq[:1], k)  # warm-up
    times: list[float] = []
    spent = 0.0
    for i in range(min(max_n, len(xq))):
        t0 = time.perf_counter()
        index.search(xq[i : i + 1], k)
        dt_s = time.perf_counter() - t0
        times.append(dt_s * 1e3)
        spent += dt_s
        if spent > budget_s and len(times) >= 5:
            break
    faiss.omp_set_num_threads(cfg.threads)
    times.sort()
    return {
        "median": statistics.median(times),
        "p95": times[min(len(times) - 1, math.ceil(0.95 * len(times)) - 1)],
        "n": len(times),
    }


def time_batched(
    cfg: Config, index: faiss.Index, xq: np.ndarray
) -> tuple[float, float, np.ndarray, np.ndarray]:
    """Per-query wall and CPU ms with all queries in one call (bulk use); returns results too.

    Best of up to 3 calls while they stay under the single-query time budget: on a shared
    machine the minimum is the figure least disturbed by other processes. CPU time (all
    threads) is reported too because, unlike wall time, it excludes time given to others.
    """
    best, best_cpu, spent = math.inf, math.inf, 0.0
    for _ in range(3):
        t0, c0 = time.perf_counter(), time.process_time()
        scores, ids = index.search(xq, cfg.k)
        dt_s, cpu_s = time.perf_counter() - t0, time.process_time() - c0
        best, best_cpu, spent = min(best, dt_s), min(best_cpu, cpu_s), spent + dt_s
        if spent > cfg.single_budget_s:
            break
    return best * 1e3 / len(xq), best_cpu * 1e3 / len(xq), scores, ids


def recall_at_k(ids: np.ndarray, gt: np.ndarray, k: int) -> float:
    """Mean fraction of the exact top-k found in the approximate top-k (k-recall@k)."""
    hits = sum(len(np.intersect1d(a[:k], b[:k])) for a, b in zip(ids, gt, strict=True))
    return hits / (k * len(gt))


def extrapolate_add_s(curve: list[tuple[int, float]], n: int) -> float:
    """Estimated HNSW add time for ``n`` vectors from a measured prefix curve of (n_i, t_i).

    Why this model: the marginal cost per insertion rises while the graph is small, then grows
    slowly (search depth ~ ln n). Take the marginal rate over the last 20% of the prefix and
    scale it by ln(n)/ln(N) for the rest. It ignores cache misses in a graph that no longer
    fits in cache, so it is optimistic.
    """
    n_end, t_end = curve[-1]
    n_ref, t_ref = next(p for p in curve if p[0] >= 0.8 * n_end)
    if n_ref == n_end:
        n_ref, t_ref = 0, 0.0
    rate = (t_end - t_ref) / (n_end - n_ref)
    return t_end + rate * (n - n_end) * math.log(n) / math.log(n_end)


# --------------------------------------------------------------------------------- the bench


def log(msg: str) -> None:
    """Print progress immediately (the run is long and usually logged to a file)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def print_row(r: Row) -> None:
    """Print one result line as soon as it is known."""

    def f(v: float | None, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    log(
        f"n={r.n:>8} {r.index:<14} {r.param:<12} {r.status:<12} "
        f"train={f(r.train_s, '.1f')}s add={f(r.add_s, '.1f')}s "
        f"single={f(r.single_ms, '.3f')}ms batched={f(r.batched_ms, '.3f')}ms "
        f"recall@k={f(r.recall, '.3f')} B/vec={f(r.bytes_per_vector, '.1f')} "
        f"x_flat={f(r.speedup_single, '.1f')}/{f(r.speedup_batched, '.1f')} {r.note}"
    )


def train_ivf(cfg: Config, mix: Mixture) -> tuple[faiss.Index, float]:
    """Train the IVF-PQ index once on a sample drawn from the same distribution.

    Why once: the trained (empty) index does not depend on the database size, so each size gets
    a clone; the training time is reported on every IVF row.
    """
    xt = take(mix, "train", cfg.train, cfg.chunk)
    index = faiss.index_factory(mix.spec.dim, cfg.ivf_factory, METRIC)
    t0 = time.perf_counter()
    index.train(xt)
    train_s = time.perf_counter() - t0
    log(f"trained {cfg.ivf_factory} on {len(xt)} vectors in {train_s:.1f}s")
    return index, train_s


def search_rows(
    cfg: Config,
    n: int,
    name: str,
    index: faiss.Index,
    params: list[tuple[str, Any]],
    xq: np.ndarray,
    gt: np.ndarray,
    flat: Row,
    train_s: float | None,
    add_s: float,
) -> list[Row]:
    """Measure one built index at each search-time parameter setting."""
    nbytes = serialized_bytes(index) / index.ntotal
    rows = []
    for label, setter in params:
        setter(index)
        single = time_single(cfg, index, xq)
        batched_ms, cpu_ms, _, ids = time_batched(cfg, index, xq)
        row = Row(
            n=n,
            index=name,
            param=label,
            status="measured",
            train_s=train_s,
            add_s=add_s,
            single_ms=single["median"],
            single_p95_ms=single["p95"],
            single_n=single["n"],
            batched_ms=batched_ms,
            batched_cpu_ms=cpu_ms,
            recall=recall_at_k(ids, gt, cfg.k),
            bytes_per_vector=nbytes,
            speedup_single=flat.single_ms / single["median"] if flat.single_ms else None,
            speedup_batched=flat.batched_ms / batched_ms if flat.batched_ms else None,
        )
        print_row(row)
        rows.append(row)
    return rows


def hnsw_params(index: faiss.Index, efs: list[int]) -> list[tuple[str, Any]]:
    """efSearch settings for an (IDMap2-wrapped) HNSW index."""
    inner = faiss.downcast_index(index.index)

    def setter(ef: int) -> Any:
        return lambda _ix: setattr(inner.hnsw, "efSearch", ef)

    return [(f"efSearch={ef}", setter(ef)) for ef in efs]


def ivf_params(nprobes: list[int]) -> list[tuple[str, Any]]:
    """nprobe settings for an IVF index."""

    def setter(p: int) -> Any:
        return lambda ix: setattr(faiss.extract_index_ivf(ix), "nprobe", p)

    return [(f"nprobe={p}", setter(p)) for p in nprobes]


def run_size(
    cfg: Config,
    mix: Mixture,
    n: int,
    xq: np.ndarray,
    ivf_trained: faiss.Index,
    ivf_train_s: float,
    hnsw_curves: dict[int, dict],
    profiles: dict[int, dict[str, float]],
) -> list[Row]:
    """Build every index on one pass over the ``n`` database vectors and measure it.

    One pass because generating 1M x 2048 vectors costs minutes on a small machine; each index's
    add time is clocked separately.
    """
    d = mix.spec.dim
    flat = faiss.index_factory(d, cfg.flat_factory, METRIC)
    preallocate_flat(flat, n)
    ivf = faiss.clone_index(ivf_trained)
    build_hnsw = n <= cfg.hnsw_max
    hnsw_n = n if build_hnsw else cfg.hnsw_max
    need_curve = not build_hnsw and hnsw_n not in hnsw_curves
    hnsw = faiss.index_factory(d, cfg.hnsw_factory, METRIC) if build_hnsw or need_curve else None

    add = {"flat": 0.0, "ivf": 0.0, "hnsw": 0.0}
    curve: list[tuple[int, float]] = []
    gen_s = 0.0
    t_gen = time.perf_counter()
    for i, x in enumerate(stream(mix, "base", n, cfg.chunk)):
        gen_s += time.perf_counter() - t_gen
        start = i * cfg.chunk
        ids = np.arange(start, start + len(x), dtype=np.int64)
        t0 = time.perf_counter()
        flat.add_with_ids(x, ids)
        add["flat"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        ivf.add_with_ids(x, ids)
        add["ivf"] += time.perf_counter() - t0
        if hnsw is not None:
            # In slices, so the add-time curve has points to extrapolate from.
            stop, step = max(0, min(len(x), hnsw_n - start)), max(1, cfg.chunk // 5)
            for lo in range(0, stop, step):
                hi = min(lo + step, stop)
                t0 = time.perf_counter()
                hnsw.add_with_ids(x[lo:hi], ids[lo:hi])
                add["hnsw"] += time.perf_counter() - t0
                curve.append((hnsw.ntotal, add["hnsw"]))
        log(f"n={n}: added {start + len(x)}/{n} (generation {gen_s:.0f}s, adds {add})")
        t_gen = time.perf_counter()

    rows: list[Row] = []
    # Exact search: reference for recall and for the speed ratios.
    single = time_single(cfg, flat, xq)
    batched_ms, cpu_ms, scores, gt = time_batched(cfg, flat, xq)
    profiles[n] = data_profile(xq, scores)
    flat_row = Row(
        n=n,
        index=cfg.flat_factory,
        param="exact",
        status="measured",
        train_s=0.0,
        add_s=add["flat"],
        single_ms=single["median"],
        single_p95_ms=single["p95"],
        single_n=single["n"],
        batched_ms=batched_ms,
        batched_cpu_ms=cpu_ms,
        recall=1.0,
        bytes_per_vector=serialized_bytes(flat) / flat.ntotal,
        speedup_single=1.0,
        speedup_batched=1.0,
        note="reference (exact search)",
    )
    print_row(flat_row)
    rows.append(flat_row)
    del flat  # frees 8 GiB at 1M before the other searches

    rows += search_rows(
        cfg, n, cfg.ivf_factory, ivf, ivf_params(cfg.nprobe), xq, gt, flat_row, ivf_train_s,
        add["ivf"],
    )  # fmt: skip
    del ivf

    if build_hnsw and hnsw is not None:
        hnsw_curves[n] = {"curve": curve, "bytes_per_vector": serialized_bytes(hnsw) / n}
        rows += search_rows(
            cfg, n, cfg.hnsw_factory, hnsw, hnsw_params(hnsw, cfg.ef_search), xq, gt, flat_row,
            0.0, add["hnsw"],
        )  # fmt: skip
    else:
        if need_curve and hnsw is not None:
            hnsw_curves[hnsw_n] = {
                "curve": curve,
                "bytes_per_vector": serialized_bytes(hnsw) / hnsw_n,
            }
        rows.append(extrapolate_hnsw(cfg, n, hnsw_n, hnsw_curves[hnsw_n]))
        print_row(rows[-1])
    return rows


def extrapolate_hnsw(cfg: Config, n: int, prefix_n: int, prefix: dict) -> Row:
    """HNSW row at a size too costly to build here: add time and size stated, not measured."""
    return Row(
        n=n,
        index=cfg.hnsw_factory,
        param="-",
        status="extrapolated",
        train_s=0.0,
        add_s=extrapolate_add_s(prefix["curve"], n),
        bytes_per_vector=prefix["bytes_per_vector"],
        note=(
            f"not built: add time extrapolated (not measured) from the marginal add rate at the "
            f"end of a {prefix_n}-vector build, scaled by ln(n)/ln({prefix_n}), optimistic as it "
            f"ignores cache misses; bytes/vector taken from that build; latency and recall not "
            f"measured (raise --hnsw-max to measure)"
        ),
    )


# ------------------------------------------------------------------------------ environment


def machine_info() -> dict[str, Any]:
    """CPU, cores, RAM and load: the figures only mean something next to the machine."""
    cpu = "unknown"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "ram_gib": round(mem_kib / 2**20, 1),
        "loadavg_start": os.getloadavg(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "faiss": faiss.__version__,
        "faiss_compile": faiss.get_compile_options(),
        "numpy": np.__version__,
    }


def data_profile(xq: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Similarity profile of the synthetic data, to judge how hard the neighbour search is."""
    half = len(xq) // 2
    return {
        "mean_top1_ip": float(scores[:, 0].mean()),
        "mean_topk_ip": float(scores[:, -1].mean()),
        "mean_gap_top1_topk": float((scores[:, 0] - scores[:, -1]).mean()),
        "mean_random_pair_ip": float((xq[:half] * xq[half : 2 * half]).sum(1).mean()),
    }


def write_markdown(result: dict[str, Any], path: Path) -> None:
    """A short human report: machine, settings, table and what to pick when."""
    m, s = result["machine"], result["settings"]
    lines = [
        "# FAISS search benchmark (`bench/search_faiss.py`)",
        "",
        f"{result['date']} - {m['cpu']}, {m['cores_usable']} cores, {m['ram_gib']} GiB RAM, "
        f"faiss {m['faiss']} ({m['faiss_compile'].strip()}), numpy {m['numpy']}; "
        f"load average at start {m['loadavg_start'][0]:.1f} "
        f"(shared machine: absolute times are noisy, ratios to Flat less so).",
        "",
        f"Data: synthetic L2-normalised {s['mixture']['dim']}-d float32 vectors: mixture of "
        f"{s['mixture']['centroids']} related unit centroids (rank-"
        f"{s['mixture']['centroid_rank']} latent + common mean) + Gaussian "
        f"rank-{s['mixture']['rank']} "
        f"structured noise + isotropic noise (see `MixtureSpec`); {s['queries']} queries from "
        f"the same distribution; inner-product metric. Recall@{s['k']} = overlap with the exact "
        f"(Flat) top-{s['k']} over all queries. IVF-PQ trained once on {s['train']} vectors of "
        f"the same distribution (`np` = no polysemous training: a plain `PQ64` in "
        f"`index_factory` adds that step, unused by inner-product search and minutes long here). "
        f"Single = one query per call on {s['single_threads']} thread(s), median over the "
        f"number of queries in brackets; batched = all queries in one call on {s['threads']} "
        f"thread(s), per query, best of up to 3 calls; under load the wall figure includes time "
        f"taken by other processes, the CPU figure does not. x Flat = Flat latency / this latency, "
        f"same run. Bytes/vector = serialised index size / ntotal (`IDMap2` adds 8 B/vector "
        f"of ids).",
        "",
        f"| n | index | search param | train s | add s | single ms/q median / p95 (n) "
        f"| batched ms/q wall (CPU) | x Flat single / batched | recall@{s['k']} "
        f"| bytes/vector |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def f(v: float | None, spec: str, pre: str = "") -> str:
        if v is None:
            return "-"
        return pre + (format(v, ".0f") if spec == ".3g" and v >= 1000 else format(v, spec))

    for r in result["results"]:
        est = "~" if r["status"] == "extrapolated" else ""
        lines.append(
            f"| {r['n']:,} | {r['index']} | {r['param']} | {f(r['train_s'], '.1f')} "
            f"| {f(r['add_s'], '.0f' if est else '.1f', est)}{' (extrap.)' if est else ''} "
            f"| {f(r['single_ms'], '.3g')} / {f(r['single_p95_ms'], '.3g')} "
            f"({r['single_n'] or '-'}) "
            f"| {f(r['batched_ms'], '.3g')} ({f(r['batched_cpu_ms'], '.3g')}) "
            f"| {f(r['speedup_single'], '.0f')} / {f(r['speedup_batched'], '.1f')} "
            f"| {f(r['recall'], '.3f')} | {f(r['bytes_per_vector'], '.0f', est)} |"
        )
    notes = [r for r in result["results"] if r["status"] != "measured"]
    if notes:
        lines += ["", *[f"- n={r['n']:,} {r['index']}: {r['note']}." for r in notes]]
    if s["note"]:
        lines += ["", f"Note: {s['note']}"]
    lines += ["", "## What to pick", "", *result["advice"], ""]
    path.write_text("\n".join(lines))


def advice(rows: list[Row], k: int) -> list[str]:
    """Data-driven pointers from this run's figures (regenerated with every run)."""
    out = []
    for n in sorted({r.n for r in rows}):
        meas = [r for r in rows if r.n == n and r.status == "measured" and r.single_ms]
        good = [r for r in meas if r.recall is not None and r.recall >= 0.95]
        fastest = min(good, key=lambda r: r.single_ms or math.inf) if good else None
        small = min(meas, key=lambda r: r.bytes_per_vector or math.inf)
        flat = next(r for r in meas if r.param == "exact")
        text = f"- n={n:,}: Flat answers in {flat.single_ms:.1f} ms/query single"
        if fastest is not None and fastest is not flat:
            text += (
                f"; the fastest setting with recall@{k} >= 0.95 is {fastest.index} "
                f"{fastest.param} ({fastest.single_ms:.2f} ms, {fastest.speedup_single:.0f}x "
                f"Flat, {fastest.bytes_per_vector:.0f} B/vector)"
            )
        text += (
            f"; the most compact is {small.index} {small.param} "
            f"({small.bytes_per_vector:.0f} B/vector, recall@{k} {small.recall:.2f}, "
            f"{small.single_ms:.2f} ms)."
        )
        out.append(text)
    out.append(
        "- Rule of thumb from these figures: Flat while a query over the archive is fast enough "
        "and results must be exact; HNSW when the vectors fit in RAM and latency matters (it "
        "costs more memory than Flat and a long build); IVF-PQ when memory is the limit, "
        "accepting lower recall (re-rank its candidates with exact vectors if needed)."
    )
    return out


def parse_args(argv: list[str] | None = None) -> Config:
    """CLI: sizes and budgets are options so a bigger machine can run the full matrix."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--queries", type=int, default=500, help="query set size (batched + recall)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument(
        "--threads", type=int, default=len(os.sched_getaffinity(0)), help="for build and batches"
    )
    p.add_argument("--single-threads", type=int, default=1, help="for single-query timing")
    p.add_argument("--train", type=int, default=50_000, help="IVF-PQ training sample size")
    p.add_argument("--chunk", type=int, default=50_000, help="vectors generated/added at a time")
    p.add_argument("--flat", default="IDMap2,Flat")
    p.add_argument(
        "--ivf", default="IVF1024,PQ64np", help="np: skip polysemous training (unused by IP search)"
    )
    p.add_argument("--hnsw", default="IDMap2,HNSW32")
    p.add_argument("--nprobe", type=int, nargs="+", default=[8, 32, 128])
    p.add_argument("--ef-search", type=int, nargs="+", default=[32, 128])
    p.add_argument(
        "--hnsw-max", type=int, default=100_000, help="largest size HNSW is built at; above it "
        "the add time is extrapolated from a build of this many vectors",
    )  # fmt: skip
    p.add_argument("--single-max", type=int, default=200, help="max single queries per setting")
    p.add_argument("--single-budget-s", type=float, default=10.0, help="time cap per setting")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--note", default="", help="context for the report, e.g. why --threads 1")
    p.add_argument("--out", default=None, help="output prefix (.json/.md); default results dir")
    p.add_argument("--quick", action="store_true", help="smoke run: 10k/20k, IVF256, to /tmp")
    p.add_argument("--render", type=Path, help="only rewrite the .md beside this results .json")
    a = p.parse_args(argv)
    if a.render:
        a.sizes, a.out = [], str(a.render.with_suffix(""))
    if a.quick:
        a.sizes, a.queries, a.train, a.chunk = [10_000, 20_000], 200, 20_000, 5_000
        a.ivf, a.hnsw_max, a.single_max = "IVF256,PQ64np", 10_000, 50
        a.out = a.out or "/tmp/search_faiss_quick"
    return Config(
        sizes=sorted(a.sizes),
        queries=a.queries,
        k=a.k,
        threads=a.threads,
        single_threads=a.single_threads,
        train=a.train,
        chunk=a.chunk,
        flat_factory=a.flat,
        ivf_factory=a.ivf,
        hnsw_factory=a.hnsw,
        nprobe=a.nprobe,
        ef_search=a.ef_search,
        hnsw_max=a.hnsw_max,
        single_max=a.single_max,
        single_budget_s=a.single_budget_s,
        out_prefix=a.out or str(RESULTS_PREFIX),
        quick=a.quick,
        note=a.note,
        mixture=MixtureSpec(seed=a.seed),
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print figures as they come, write JSON and markdown."""
    cfg = parse_args(argv)
    if not cfg.sizes:  # --render: report template changed, figures unchanged
        prefix = Path(cfg.out_prefix)
        result = json.loads(prefix.with_suffix(".json").read_text())
        write_markdown(result, prefix.with_suffix(".md"))
        return 0
    faiss.omp_set_num_threads(cfg.threads)
    machine = machine_info()
    log(f"machine: {machine}")
    log(f"settings: {asdict(cfg)}")
    t_start = time.perf_counter()
    mix = make_mixture(cfg.mixture)
    xq = take(mix, "query", cfg.queries, cfg.chunk)
    ivf_trained, ivf_train_s = train_ivf(cfg, mix)

    rows: list[Row] = []
    hnsw_curves: dict[int, dict] = {}
    profiles: dict[int, dict[str, float]] = {}
    for n in cfg.sizes:
        rows += run_size(cfg, mix, n, xq, ivf_trained, ivf_train_s, hnsw_curves, profiles)

    machine["loadavg_end"] = os.getloadavg()
    result = {
        "benchmark": "search_faiss",
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "wall_s": round(time.perf_counter() - t_start, 1),
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "machine": machine,
        "settings": asdict(cfg),
        "data_profile": {str(n): v for n, v in profiles.items()},
        "hnsw_prefix_builds": {
            str(k): {"add_curve_n_s": v["curve"], "bytes_per_vector": v["bytes_per_vector"]}
            for k, v in hnsw_curves.items()
        },
        "results": [asdict(r) for r in rows],
        "advice": advice(rows, cfg.k),
    }
    prefix = Path(cfg.out_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    prefix.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(result, prefix.with_suffix(".md"))
    log(f"done in {result['wall_s']}s -> {prefix}.json / .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
