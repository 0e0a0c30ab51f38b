"""Search at archive scale: 1M and 10M descriptors grown from the real images, per index config.

Why: the accuracy benchmarks run on ten thousand real images; users index millions of tiles.
This script measures, for each index configuration, what a deployment pays at 1M and 10M
vectors: build time, bytes on disk, resident memory of the searching process, single-query
p50/p99 latency, batched throughput and recall@10 against exact search. Goal (issue 10): 10M
vectors at recall@10 >= 0.95 in under 10 ms per single query, the searching process under 8 GB
resident, on a 2-core machine.

Data, in four steps (each cached in --workdir, so a run resumes where it stopped):
1. Real descriptors: every shared image (UCM 2,100 + NWPU-RESISC12 8,400) embedded by the
   default pretrained embedder (`model.backbones.default_backbone()`: ResNet-50 when its
   ImageNet file is installed, else EfficientNet-Lite0; ImageNet weights, GeM, no attention,
   no fine-tuning). 1,000 of them (random, seed 0) are held out as the queries.
2. A generator fitted to the other 9,500 ("seeds") multiplies them (`StructuredGenerator`): a
   synthetic descriptor is a seed moved part of the way (t ~ U(0, 0.5)) toward one of its 10
   nearest real neighbours, plus noise drawn from a probabilistic PCA (Tipping and Bishop,
   JRSS-B 1999, doi:10.1111/1467-9868.00196) of the differences between real nearest
   neighbours (rank 64, the remaining variance isotropic), then L2-normalised. The noise scale
   is calibrated on a 90/10 split of the seeds: as many synthetic vectors as seeds, grown
   from 90 %, are as close to the other 10 % (mean top-10 cosine) as the real 90 % are. So
   the archive keeps the real descriptors' classes, their neighbourhood graph and the
   directions in which real neighbours differ, at 100 to 1,000 times the density. The report
   checks this against the real set at equal size (neighbour similarities, label
   precision of the top 10).
3. Reduction (issue 10, item 2): a PCA learned on the seeds keeps 256 of the descriptor's axes
   (x -> normalise(E^T (x - mean)), the form of the whitening artifact without its scaling),
   so the index and the exact vectors kept for re-ranking are 4 to 8 times smaller.
4. Exact neighbours of the query sample by brute force, while generating: in the reduced space
   (what every index below approximates) and in the full descriptor space (what the reduction
   itself costs).

Each configuration is built with the production code (`indexer.store.new_faiss_index`, trained on
a random sample of 30 x nlist vectors as `IndexStore.train` is, files written by
`indexer.segments.write_index_file` / `write_vectors_file`) as one compacted segment, and
searched in a separate process through `indexer.segments.LoadedSegment` (the store's search,
including the exact re-ranking of compressed codes from memory-mapped float32 vectors), whose
resident memory (VmRSS, VmHWM; anonymous and file-backed) is read from /proc.

Usage::

    nice -n 10 .venv/bin/python bench/search_scale.py --sizes 1000000        # the 1M report
    nice -n 10 .venv/bin/python bench/search_scale.py --sizes 1000000 10000000
    .venv/bin/python bench/search_scale.py --quick                            # smoke run, /tmp
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import DATA_ROOT, write_report
from bench.search_faiss import machine_info
from indexer.factory import auto_factory, lossy, min_training_vectors, nlist_for
from indexer.segments import (
    LoadedSegment,
    VectorRows,
    innermost,
    merge_topk,
    read_index_file,
    set_search_defaults,
    write_index_file,
    write_vectors_file,
)
from indexer.store import new_faiss_index

K = 10
CHUNK = 32_768
WORKDIR = Path(tempfile.gettempdir()) / "rsir-search-scale"


def log(message: str) -> None:
    stamp = dt.datetime.now().strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", file=sys.stderr, flush=True)


def normalise(x: np.ndarray) -> np.ndarray:
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


# ------------------------------------------------------------------------ 1. real descriptors


def real_descriptors(work: Path, limit: int | None) -> dict[str, Any]:
    """Descriptors of every shared image by the default pretrained embedder (cached)."""
    import torch
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset

    from indexer.embedding import EmbeddingModel, configure_torch_threads
    from model.backbones import default_backbone
    from model.checkpoint import embedder_checkpoint
    from model.datasets import discover_dataset
    from model.embedder import EmbedderConfig, build_embedder
    from model.transforms import Preprocessing

    backbone = default_backbone()
    cache = work / f"real-{backbone}{'-' + str(limit) if limit else ''}.npz"
    if cache.exists():
        with np.load(cache) as data:
            return {k: data[k] for k in data.files} | {"backbone": backbone, "cached": True}
    paths: list[Path] = []
    labels: list[int] = []
    names: list[str] = []
    for kind in ("ucm", "nwpu"):
        found = discover_dataset(kind, DATA_ROOT)
        keep = range(len(found)) if limit is None else range(0, len(found), len(found) // limit)
        paths += [found.paths[i] for i in keep]
        labels += [len(names) + found.labels[i] for i in keep]
        names += [f"{kind}/{c}" for c in found.class_names]
    net, init = build_embedder(EmbedderConfig(backbone, attention=False), pretrained=True)
    pre = Preprocessing.for_backbone(backbone)
    fingerprint = embedder_checkpoint(net, pre, [], init, "none").fingerprint
    threads = configure_torch_threads()
    model = EmbeddingModel(net, pre, torch.device("cpu"))
    transform = model.transform

    class Images(Dataset[torch.Tensor]):
        def __len__(self) -> int:
            return len(paths)

        def __getitem__(self, i: int) -> torch.Tensor:
            with Image.open(paths[i]) as image:
                return transform(image.convert("RGB"))

    loader = DataLoader(Images(), batch_size=32, num_workers=1)
    out, started = [], time.perf_counter()
    for i, batch in enumerate(loader):
        out.append(model.embed_tensors(batch))
        if i % 20 == 0:
            log(f"embedded {len(out) * 32:,} / {len(paths):,} images ({backbone}, {init})")
    result = {
        "descriptors": np.vstack(out).astype(np.float32),
        "labels": np.asarray(labels, np.int32),
        "class_names": np.asarray(names),
        "init": np.asarray(init),
        "fingerprint": np.asarray(fingerprint),
        "embed_seconds": np.asarray(time.perf_counter() - started),
        "torch_threads": np.asarray(threads),
    }
    work.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **result)  # type: ignore[arg-type]
    return result | {"backbone": backbone, "cached": False}


def hold_out(n: int, queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the held-out queries and of the seeds."""
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[:queries]), np.sort(order[queries:])


def knn(x: np.ndarray, y: np.ndarray, k: int, exclude_self: bool) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k (inner product) of rows of x among rows of y: (scores, indices)."""
    scores_all, ids_all = [], []
    for start in range(0, len(x), 1024):
        s = x[start : start + 1024] @ y.T
        if exclude_self:
            s[np.arange(len(s)), np.arange(start, start + len(s))] = -np.inf
        part = np.argpartition(-s, k, axis=1)[:, :k]
        ps = np.take_along_axis(s, part, axis=1)
        order = np.argsort(-ps, axis=1)
        scores_all.append(np.take_along_axis(ps, order, axis=1))
        ids_all.append(np.take_along_axis(part, order, axis=1))
    return np.vstack(scores_all), np.vstack(ids_all)


# ------------------------------------------------------------------------------- 2. generator


@dataclass
class StructuredGenerator:
    """Synthetic descriptors that keep the structure of real ones (see the module doc, step 2)."""

    seeds: np.ndarray  # (m, D) float32 unit rows
    labels: np.ndarray  # (m,) label of each seed
    neighbours: np.ndarray  # (m, K) indices of each seed's nearest other seeds
    basis: np.ndarray  # (rank, D) principal directions of neighbour differences, x sqrt(var)
    iso: float  # std of the isotropic remainder per dimension
    scale: float  # noise scale calibrated on the real nearest-neighbour similarity
    target_cosine: float  # real probes' mean top-10 cosine among the other real seeds

    @classmethod
    def fit(
        cls, seeds: np.ndarray, labels: np.ndarray, k: int = 10, rank: int = 64
    ) -> StructuredGenerator:
        """Fit to `seeds`; the noise scale is calibrated on a 90/10 split of them."""
        probes, rest = hold_out(len(seeds), max(1, len(seeds) // 10), seed=3)
        part = cls._unscaled(seeds[rest], labels[rest], k, rank)
        real, _ = knn(seeds[probes], seeds[rest], k, exclude_self=False)
        part.target_cosine = float(real.mean())
        scale = part._calibrate(seeds[probes])
        gen = cls._unscaled(seeds, labels, k, rank)
        gen.scale, gen.target_cosine = scale, part.target_cosine
        return gen

    @classmethod
    def _unscaled(
        cls, seeds: np.ndarray, labels: np.ndarray, k: int, rank: int
    ) -> StructuredGenerator:
        _, neighbours = knn(seeds, seeds, k, exclude_self=True)
        diffs = seeds - seeds[neighbours[:, 0]]
        cov = (diffs.T.astype(np.float64) @ diffs) / len(diffs)
        values, vectors = np.linalg.eigh(cov)
        values, vectors = values[::-1], vectors[:, ::-1]
        basis = (vectors[:, :rank] * np.sqrt(np.maximum(values[:rank], 0))).T.astype(np.float32)
        iso = float(np.sqrt(max(values[rank:].mean(), 0.0)))
        return cls(seeds, labels, neighbours, basis, iso, 1.0, 0.0)

    def _calibrate(self, probes: np.ndarray) -> float:
        """The noise scale at which as many synthetic vectors as seeds look, from real probes
        not among the seeds, as close as the seeds do (mean top-10 cosine)."""
        lo, hi = 0.0, 4.0
        for _ in range(16):
            self.scale = (lo + hi) / 2
            synthetic, _ = self.draw(len(self.seeds), np.random.default_rng(12345))
            found, _ = knn(probes, synthetic, len(self.neighbours[0]), exclude_self=False)
            if found.mean() > self.target_cosine:
                lo = self.scale
            else:
                hi = self.scale
        return (lo + hi) / 2

    def draw(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """n unit vectors (n, D) float32 and the seed each was grown from."""
        m, dim = self.seeds.shape
        seed_of = rng.integers(0, m, n)
        other = self.neighbours[seed_of, rng.integers(0, self.neighbours.shape[1], n)]
        t = rng.uniform(0.0, 0.5, n).astype(np.float32)[:, None]
        x = self.seeds[seed_of] * (1 - t)
        x += self.seeds[other] * t
        z = rng.standard_normal((n, len(self.basis)), dtype=np.float32)
        x += (z @ self.basis) * np.float32(self.scale)
        x += rng.standard_normal((n, dim), dtype=np.float32) * np.float32(self.scale * self.iso)
        return normalise(x), seed_of

    def chunk(self, size: int, n: int, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Chunk i of an archive of `size` vectors: reproducible from (size, i) alone."""
        return self.draw(n, np.random.default_rng([20261127, size, i]))


@dataclass
class Reduction:
    """PCA to `dim` axes learned on the seeds: x -> normalise((x - mean) @ axes)."""

    mean: np.ndarray
    axes: np.ndarray  # (D, dim) float32

    @classmethod
    def fit(cls, x: np.ndarray, dim: int) -> Reduction:
        mean = x.mean(axis=0)
        centred = (x - mean).astype(np.float64)
        values, vectors = np.linalg.eigh(centred.T @ centred / len(x))
        axes = vectors[:, np.argsort(values)[::-1][:dim]].astype(np.float32)
        return cls(mean.astype(np.float32), axes)

    @property
    def dim(self) -> int:
        return int(self.axes.shape[1])

    def apply(self, x: np.ndarray) -> np.ndarray:
        return normalise((x - self.mean) @ self.axes)


class TopK:
    """Running exact top-k of a fixed query set over streamed database chunks."""

    def __init__(self, queries: np.ndarray, k: int) -> None:
        self.queries = queries
        self.k = k
        self.scores = np.full((len(queries), k), -np.inf, np.float32)
        self.ids = np.full((len(queries), k), -1, np.int64)

    def add(self, chunk: np.ndarray, first_id: int) -> None:
        s = self.queries @ chunk.T
        k = min(self.k, s.shape[1])
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        scores = np.hstack([self.scores, np.take_along_axis(s, part, axis=1)])
        ids = np.hstack([self.ids, part + first_id])
        order = np.argsort(-scores, axis=1, kind="stable")[:, : self.k]
        self.scores = np.take_along_axis(scores, order, axis=1)
        self.ids = np.take_along_axis(ids, order, axis=1)


def build_archive(
    size: int,
    gen: StructuredGenerator,
    red: Reduction,
    queries_full: np.ndarray,
    gt_queries: int,
    keep_full: bool,
    work: Path,
) -> dict[str, Any]:
    """Generate the archive (reduced vectors on disk, full ones when asked) and the exact top-k
    of the first `gt_queries` queries in both spaces; resumes a finished archive."""
    folder = work / f"n{size}"
    meta_path = folder / "archive.json"
    if meta_path.exists():
        meta: dict[str, Any] = json.loads(meta_path.read_text())
        if meta.get("keep_full", False) >= keep_full and meta["gt_queries"] >= gt_queries:
            return meta
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    reduced = np.lib.format.open_memmap(
        folder / "reduced.npy", mode="w+", dtype=np.float32, shape=(size, red.dim)
    )
    full = (
        np.lib.format.open_memmap(
            folder / "full.npy", mode="w+", dtype=np.float32, shape=(size, gen.seeds.shape[1])
        )
        if keep_full
        else None
    )
    labels = np.empty(size, np.int16)
    q_full = queries_full[:gt_queries]
    exact_full, exact_red = TopK(q_full, K), TopK(red.apply(q_full.copy()), K)
    started, cpu = time.perf_counter(), time.process_time()
    for i, start in enumerate(range(0, size, CHUNK)):
        n = min(CHUNK, size - start)
        x, seed_of = gen.chunk(size, n, i)
        labels[start : start + n] = gen.labels[seed_of]
        exact_full.add(x, start)
        y = red.apply(x)
        exact_red.add(y, start)
        reduced[start : start + n] = y
        if full is not None:
            full[start : start + n] = x
        if i % 50 == 0:
            log(
                f"archive {size:,}: {start + n:,} generated ({time.perf_counter() - started:.0f} s)"
            )
    reduced.flush()
    del reduced
    if full is not None:
        full.flush()
        del full
    np.save(folder / "labels.npy", labels)
    np.savez(
        folder / "exact.npz",
        full_ids=exact_full.ids,
        full_scores=exact_full.scores,
        reduced_ids=exact_red.ids,
        reduced_scores=exact_red.scores,
    )
    meta = {
        "size": size,
        "gt_queries": gt_queries,
        "keep_full": keep_full,
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu,
        # Structure at this size: similarity of each query's 1st and 10th exact neighbour, and
        # the fraction of its top 10 grown from seeds of the query's own class.
        "profile": {
            "full_top1_cosine": float(np.mean(exact_full.scores[:, 0])),
            "full_top10_cosine": float(np.mean(exact_full.scores[:, K - 1])),
            "reduced_top1_cosine": float(np.mean(exact_red.scores[:, 0])),
            "reduced_top10_cosine": float(np.mean(exact_red.scores[:, K - 1])),
        },
    }
    meta_path.write_text(json.dumps(meta, indent=1))
    return meta


def structure_check(
    gen: StructuredGenerator, queries: np.ndarray, query_labels: np.ndarray
) -> dict[str, Any]:
    """Real seeds vs an equal number of synthetic vectors, seen from the real queries."""
    m = len(gen.seeds)
    synthetic, seed_of = gen.draw(m, np.random.default_rng(7))
    out: dict[str, Any] = {"vectors": m, "calibration_top10_cosine": gen.target_cosine}
    for name, base, labels in (
        ("real", gen.seeds, gen.labels),
        ("synthetic", synthetic, gen.labels[seed_of]),
    ):
        scores, ids = knn(queries, base, 100, exclude_self=False)
        out[name] = {
            "top1_cosine": float(scores[:, 0].mean()),
            "top10_cosine": float(scores[:, 9].mean()),
            "top100_cosine": float(scores[:, 99].mean()),
            "label_precision_at_10": float((labels[ids[:, :10]] == query_labels[:, None]).mean()),
        }
    return out


# ------------------------------------------------------------------------- 3. configurations


@dataclass
class Setup:
    """One index configuration: a factory over the full or reduced vectors."""

    name: str
    space: str  # "full" or "reduced"
    factory: str  # FAISS factory string; "{nlist}" is filled from the archive's size
    # (nprobe, re-rank depth) pairs: IVF lists probed (0: exact index) and candidates per
    # result re-ranked exactly from the float32 vectors (compressed codes only; the store's
    # default is 10)
    params: list[tuple[int, int]]
    max_size: int = 10**12  # not built above this size (said in the report)
    why_not_larger: str = ""

    def factory_for(self, size: int, dim: int) -> str:
        """The factory at this size; "auto" is what `rsir index --index auto` would pick."""
        if self.factory == "auto":
            return auto_factory(size, dim)
        return self.factory.replace("{nlist}", str(nlist_for(size)))


PQ_PARAMS = [(16, 10), (32, 10), (32, 50), (64, 50), (64, 100), (128, 100)]
SQ_PARAMS = [(8, 10), (16, 10), (32, 10), (64, 10)]
SETUPS = [
    Setup(
        "flat-256", "reduced", "Flat", [(0, 0)], max_size=1_000_000,
        why_not_larger="10M x 256 float32 is 10 GB resident, over the 8 GB goal",
    ),
    Setup("ivf-pq32-256", "reduced", "IVF{nlist},PQ32np", PQ_PARAMS),
    Setup("ivf-hnsw-pq32-256", "reduced", "IVF{nlist}_HNSW32,PQ32np", PQ_PARAMS),
    Setup("ivf-sq8-256", "reduced", "IVF{nlist},SQ8", SQ_PARAMS),
    Setup(
        "flat-full", "full", "Flat", [(0, 0)], max_size=1_000_000,
        why_not_larger="10M x 1280 float32 is 51 GB: neither RAM nor this disk holds it",
    ),
    Setup(
        "auto-full", "full", "auto", SQ_PARAMS, max_size=1_000_000,
        why_not_larger="its float32 vectors for re-ranking are 51 GB at 10M",
    ),
]  # fmt: skip


def build(setup: Setup, size: int, work: Path, threads: int) -> dict[str, Any]:
    """Train (random sample of >= 30 x nlist), add and write one segment; timings and bytes."""
    folder = work / f"n{size}"
    out = folder / setup.name
    done = out / "build.json"
    if done.exists():
        return dict(json.loads(done.read_text()))
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    source = np.load(folder / ("full.npy" if setup.space == "full" else "reduced.npy"), "r")
    factory = setup.factory_for(size, int(source.shape[1]))
    faiss.omp_set_num_threads(threads)
    index = new_faiss_index(int(source.shape[1]), factory)
    wall, cpu = time.perf_counter(), time.process_time()
    train_n = 0
    if not index.is_trained:
        train_n = min(size, max(min_training_vectors(index), 256 * 64))
        sample = np.sort(np.random.default_rng(1).choice(size, train_n, replace=False))
        index.train(np.ascontiguousarray(source[sample]))
    train_s = time.perf_counter() - wall
    for start in range(0, size, 4 * CHUNK):
        part = np.ascontiguousarray(source[start : start + 4 * CHUNK])
        index.add_with_ids(part, np.arange(start, start + len(part), dtype=np.int64))
        if start % (40 * CHUNK) == 0:
            log(f"{setup.name} {size:,}: {start + len(part):,} added")
    add_s = time.perf_counter() - wall - train_s
    index_bytes = write_index_file(index, out / "segment.faiss")
    del index
    vector_bytes = 0
    if lossy(factory):  # the exact vectors the store keeps beside compressed codes
        vector_bytes = write_vectors_file([source], out / "segment.vectors.npy")
    figures = {
        "factory": factory,
        "dim": int(source.shape[1]),
        "train_vectors": train_n,
        "train_s": train_s,
        "add_s": add_s,
        "build_s": time.perf_counter() - wall,
        "build_cpu_s": time.process_time() - cpu,
        "index_bytes": index_bytes,
        "vector_bytes": vector_bytes,
        "disk_bytes": index_bytes + vector_bytes,
        "threads": threads,
    }
    done.write_text(json.dumps(figures, indent=1))
    return figures


# ----------------------------------------------------------------- 4. the searching process


def memory() -> dict[str, float]:
    """This process's resident memory in GiB (/proc/self/status)."""
    wanted = {"VmRSS", "VmHWM", "RssAnon", "RssFile"}
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in wanted:
                out[key] = int(value.split()[0]) / 2**20
    return out


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(
        np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found, exact, strict=True)])
    )


def search_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Load one segment as the store does and measure it (run in its own process)."""
    started = time.perf_counter()
    folder = Path(spec["folder"])
    index = read_index_file(folder / "segment.faiss")
    set_search_defaults(index)
    vectors_path = folder / "segment.vectors.npy"
    vectors = VectorRows(vectors_path) if vectors_path.exists() else None
    seg = LoadedSegment.of(1, 1, 1, index, vectors)
    load_s = time.perf_counter() - started
    queries = np.load(spec["queries"])
    exact = np.load(spec["exact"])
    gt_n = len(exact["reduced_ids"])
    inner = innermost(index)
    rows = []
    for nprobe, rerank in spec["params"]:
        if isinstance(inner, faiss.IndexIVF):
            inner.nprobe = nprobe
        seg.rerank = rerank
        # warm-up: other queries than the timed ones (the first touches of the files)
        faiss.omp_set_num_threads(1)
        for q in queries[-20:]:
            seg.search(q[None], K, None)
        times, cpu_times = [], []
        budget = time.perf_counter() + spec["single_budget_s"]
        for q in queries[: min(spec["single_queries"], len(queries) - 20)]:
            t0, c0 = time.perf_counter(), time.thread_time()
            merge_topk([seg.search(q[None], K, None)], 1, K)
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.thread_time() - c0)  # one thread: the work, not the waits
            if time.perf_counter() > budget and len(times) >= 20:
                break
        faiss.omp_set_num_threads(spec["threads"])
        batch = queries[: spec["batch_queries"]]
        t0, c0 = time.perf_counter(), time.process_time()
        _, ids = merge_topk([seg.search(batch, K, None)], len(batch), K)
        batch_s, batch_cpu = time.perf_counter() - t0, time.process_time() - c0
        ms, cpu_ms = np.asarray(times) * 1e3, np.asarray(cpu_times) * 1e3
        rows.append(
            {
                "nprobe": nprobe,
                "rerank": rerank,
                "single_n": len(times),
                "single_p50_ms": float(np.percentile(ms, 50)),
                "single_p99_ms": float(np.percentile(ms, 99)),
                "single_mean_ms": float(ms.mean()),
                "single_cpu_p50_ms": float(np.percentile(cpu_ms, 50)),
                "single_cpu_p99_ms": float(np.percentile(cpu_ms, 99)),
                "batch_queries": len(batch),
                "batch_qps": len(batch) / batch_s,
                "batch_cpu_ms_per_query": batch_cpu / len(batch) * 1e3,
                "recall_at_10": recall(ids[:gt_n], exact["reduced_ids"])
                if spec["space"] == "reduced"
                else recall(ids[:gt_n], exact["full_ids"]),
                "recall_at_10_vs_full": recall(ids[:gt_n], exact["full_ids"]),
            }
        )
    return {"load_s": load_s, "rows": rows, "memory_gib": memory()}


def run_search(
    setup: Setup, size: int, work: Path, queries: Path, args: argparse.Namespace
) -> dict[str, Any]:
    folder = work / f"n{size}"
    spec = {
        "folder": str(folder / setup.name),
        "queries": str(queries.with_name(f"queries-{setup.space}.npy")),
        "exact": str(folder / "exact.npz"),
        "params": setup.params,
        "space": setup.space,
        "threads": args.threads,
        "single_queries": args.single_queries,
        "single_budget_s": args.single_budget_s,
        "batch_queries": args.batch_queries,
    }
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"search worker failed:\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


# ------------------------------------------------------------------------------------ report


def gib(n: float) -> str:
    return f"{n / 2**30:,.2f}"


def markdown(result: dict[str, Any]) -> str:
    m, s = result["machine"], result["settings"]
    real, sc = result["real"], result["structure"]
    lines = [
        "# Search at archive scale (`bench/search_scale.py`)",
        "",
        f"{result['date']}: {m['cpu']}, {m['cores_usable']} usable cores, {m['ram_gib']} GiB "
        f"RAM, faiss {m['faiss']}, numpy {m['numpy']}. Load average at start "
        f"{m['loadavg_start'][0]:.1f}, at end {result['loadavg_end'][0]:.1f}: the machine is "
        "shared with other engineers' jobs and this run is `nice -n 10`, so absolute times are "
        "inflated and noisy; compare configurations as ratios within this run.",
        "",
        "## Data",
        "",
        f"- Real descriptors: {real['images']:,} shared images (UCM + NWPU-RESISC12) embedded by "
        f"the default pretrained embedder ({real['backbone']}, {real['init']}, GeM, no "
        f"attention, no fine-tuning; d = {real['dim']}; {real['embed_seconds']:.0f} s). "
        f"{s['queries']:,} held out as queries (the first {s['gt_queries']} for recall), "
        f"{real['images'] - s['queries']:,} seed the generator.",
        f"- Generator (`StructuredGenerator`, module doc): seed moved toward one of its 10 real "
        f"neighbours + PPCA noise of real neighbour differences (rank 64), noise scale "
        f"{result['generator']['scale']:.3f}: at equal size, the synthetic set is as close to "
        "real probe images (mean top-10 cosine "
        f"{sc['calibration_top10_cosine']:.3f}) as the real seeds are.",
        f"- Reduction: PCA {real['dim']} -> {s['reduced_dim']} learned on the seeds.",
        "",
        f"Structure check, {sc['vectors']:,} real seeds vs as many synthetic vectors, seen "
        "from the real queries (mean over queries):",
        "",
        "| database | 1st-NN cosine | 10th-NN cosine | 100th-NN cosine | label precision@10 |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name in ("real", "synthetic"):
        r = sc[name]
        lines.append(
            f"| {name} | {r['top1_cosine']:.3f} | {r['top10_cosine']:.3f} | "
            f"{r['top100_cosine']:.3f} | {r['label_precision_at_10']:.3f} |"
        )
    lines += [
        "",
        "Exact neighbours at each size (mean over the recall queries; the archive grows denser "
        "around every real query):",
        "",
        "| vectors | generated in (s) | full 1st / 10th cosine | reduced 1st / 10th cosine | "
        f"PCA-{s['reduced_dim']} exact top-10 vs full exact (recall@10) |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for a in result["archives"]:
        p = a["profile"]
        lines.append(
            f"| {a['size']:,} | {a['seconds']:.0f} | {p['full_top1_cosine']:.3f} / "
            f"{p['full_top10_cosine']:.3f} | {p['reduced_top1_cosine']:.3f} / "
            f"{p['reduced_top10_cosine']:.3f} | {a['reduction_recall']:.3f} |"
        )
    lines += [
        "",
        "## Configurations",
        "",
        "Built as one compacted segment with the production code; searched in a separate "
        "process through `LoadedSegment` (compressed codes: the top k x `rerank` candidates "
        "are re-ranked exactly from the float32 vectors on disk, read row by row with pread "
        "(indexer/segments.py VectorRows); the store's default "
        "rerank is 10). Single query: 1 thread, one query per call, after 20 warm-up queries; "
        "wall time and, beside it, the thread's CPU time (the work itself: on this loaded "
        "machine the wall time also holds waits for a core). Batched: "
        f"{s['batch_queries']} queries in one call on {s['threads']} thread(s). "
        "Recall@10 against exact search over the same vectors (reduced or full), and against "
        "exact search over the full descriptors. RSS: the searching process's peak (VmHWM) "
        "over the whole run (single queries and every batched pass) and, at the end, its "
        "anonymous / file-backed parts.",
        "",
        "| vectors | config | factory | nprobe / rerank | build s (train + add) | on disk GB | "
        "RSS peak GiB (anon / file) | single wall p50 / p99 ms (n) | single CPU p50 / p99 ms | "
        "batched q/s | recall@10 | recall@10 vs full | x flat-256 single CPU |",
        "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | "
        "---: |",
    ]
    for size_block in result["runs"]:
        size = size_block["size"]
        base = next(
            (
                r
                for c in size_block["configs"]
                if c["name"] == "flat-256"
                for r in c["search"]["rows"]
            ),
            None,
        )
        for c in size_block["configs"]:
            if "skipped" in c:
                lines.append(f"| {size:,} | {c['name']} | - | - | not built: {c['skipped']} |"
                             " | | | | | | | |")  # fmt: skip
                continue
            b, mem = c["build"], c["search"]["memory_gib"]
            for r in c["search"]["rows"]:
                ratio = base["single_cpu_p50_ms"] / r["single_cpu_p50_ms"] if base else float("nan")
                knobs = f"{r['nprobe']} / {r['rerank']}" if r["nprobe"] else "exact"
                lines.append(
                    f"| {size:,} | {c['name']} | {b['factory']} | {knobs} | "
                    f"{b['build_s']:,.0f} ({b['train_s']:,.0f} + {b['add_s']:,.0f}) | "
                    f"{b['disk_bytes'] / 1e9:,.2f} | {mem['VmHWM']:.2f} ({mem['RssAnon']:.2f} / "
                    f"{mem['RssFile']:.2f}) | {r['single_p50_ms']:.2f} / {r['single_p99_ms']:.2f}"
                    f" ({r['single_n']}) | {r['single_cpu_p50_ms']:.2f} / "
                    f"{r['single_cpu_p99_ms']:.2f} | {r['batch_qps']:,.0f} | "
                    f"{r['recall_at_10']:.3f} | {r['recall_at_10_vs_full']:.3f} | {ratio:.1f} |"
                )
    lines += ["", "## Against the goal", ""] + result["verdict"] + [""]
    if result.get("note"):
        lines += ["## Conditions of this run", "", result["note"], ""]
    return "\n".join(lines)


def verdict(result: dict[str, Any]) -> list[str]:
    """Which measured (size, config, nprobe) meet the goal, per size; what was not measured."""
    out = []
    for block in result["runs"]:
        meets = []
        for c in block["configs"]:
            if "skipped" in c:
                continue
            peak = c["search"]["memory_gib"]["VmHWM"]
            for r in c["search"]["rows"]:
                if r["recall_at_10"] >= 0.95 and r["single_p50_ms"] < 10 and peak < 8:
                    meets.append(
                        f"{c['name']} nprobe {r['nprobe']} rerank {r['rerank']} (recall@10 "
                        f"{r['recall_at_10']:.3f}, wall p50 {r['single_p50_ms']:.2f} ms / p99 "
                        f"{r['single_p99_ms']:.2f} ms, CPU p50 {r['single_cpu_p50_ms']:.2f} ms, "
                        f"peak RSS {peak:.2f} GiB)"
                    )
        found = "; ".join(meets) if meets else "none of the measured configurations"
        out.append(
            f"- {block['size']:,} vectors, recall@10 >= 0.95 with p50 < 10 ms and peak RSS "
            f"< 8 GiB: {found}."
        )
    if 10_000_000 not in [b["size"] for b in result["runs"]]:
        out.append("- 10,000,000 vectors: NOT measured in this run.")
    return out


# -------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--configs", nargs="+", default=[s.name for s in SETUPS])
    parser.add_argument("--queries", type=int, default=1000, help="real images held out")
    parser.add_argument("--gt-queries", type=int, default=200, help="of which for recall")
    parser.add_argument("--reduced-dim", type=int, default=256)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--single-queries", type=int, default=1000)
    parser.add_argument("--single-budget-s", type=float, default=60.0)
    parser.add_argument("--batch-queries", type=int, default=1000)
    parser.add_argument("--workdir", type=Path, default=WORKDIR)
    parser.add_argument("--note", default="", help="conditions of the run, for the report")
    parser.add_argument("--name", default="search_scale", help="report name in bench/results")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run; report in /tmp")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(search_worker(json.loads(args.worker))))
        return
    limit = None
    if args.quick:
        limit, args.sizes, args.queries, args.gt_queries = 200, [20_000], 100, 50
        args.workdir = args.workdir.with_name(args.workdir.name + "-quick")
        args.single_queries, args.batch_queries = 50, 100
        for s in SETUPS:
            s.params = s.params[:2]
    work: Path = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "note": args.note,
    }
    real = real_descriptors(work, limit)
    x, labels = real["descriptors"], real["labels"]
    q_idx, s_idx = hold_out(len(x), args.queries)
    result["real"] = {
        "images": len(x),
        "dim": int(x.shape[1]),
        "backbone": real["backbone"],
        "init": str(real["init"]),
        "fingerprint": str(real["fingerprint"]),
        "embed_seconds": float(real["embed_seconds"]),
    }
    log(f"{len(x):,} real descriptors, d = {x.shape[1]}")
    gen = StructuredGenerator.fit(x[s_idx], labels[s_idx])
    result["generator"] = {
        "scale": gen.scale,
        "iso": gen.iso,
        "rank": len(gen.basis),
        "target_cosine": gen.target_cosine,
    }
    result["structure"] = structure_check(gen, x[q_idx], labels[q_idx])
    log(f"generator fitted: {result['generator']}; structure {result['structure']}")
    red = Reduction.fit(x[s_idx], args.reduced_dim)
    queries_full = np.ascontiguousarray(x[q_idx])
    # Queries in random order: the recall sample and the timed queries mix all classes.
    queries_full = queries_full[np.random.default_rng(2).permutation(len(queries_full))]
    np.save(work / "queries-full.npy", queries_full)
    np.save(work / "queries-reduced.npy", red.apply(queries_full.copy()))
    by_name = {s.name: s for s in SETUPS}
    chosen = [by_name[name] for name in args.configs]  # in the order asked
    result["archives"], result["runs"] = [], []
    for size in args.sizes:
        keep_full = any(s.space == "full" and size <= s.max_size for s in chosen)
        meta = build_archive(
            size, gen, red, queries_full, args.gt_queries, keep_full, work
        )  # fmt: skip
        with np.load(work / f"n{size}" / "exact.npz") as exact:
            meta["reduction_recall"] = recall(exact["reduced_ids"], exact["full_ids"])
        result["archives"].append(meta)
        block: dict[str, Any] = {"size": size, "configs": []}
        for setup in chosen:
            if size > setup.max_size:
                block["configs"].append({"name": setup.name, "skipped": setup.why_not_larger})
                continue
            log(f"{size:,} {setup.name}: building")
            figures = build(setup, size, work, args.threads)
            log(f"{size:,} {setup.name}: built {figures}; searching")
            searched = run_search(setup, size, work, work / "queries-full.npy", args)
            log(f"{size:,} {setup.name}: {searched}")
            block["configs"].append({"name": setup.name, "build": figures, "search": searched})
            report(result, [*result["runs"], block], args)  # a cut-short run still reports
        result["runs"].append(block)
    print(report(result, result["runs"], args))


def report(result: dict[str, Any], runs: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """Write the JSON and markdown of what is measured so far; returns the markdown."""
    result = result | {"runs": runs, "loadavg_end": os.getloadavg()}
    result["verdict"] = verdict(result)
    text = markdown(result)
    if args.quick:
        (Path(tempfile.gettempdir()) / "search_scale.md").write_text(text)
    else:
        write_report(args.name, result, text)
    return text


if __name__ == "__main__":
    main()
