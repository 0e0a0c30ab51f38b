"""Indexing cost per added vector as the archive grows: segments vs rewriting the whole index.

Why: before segments, every commit (2,048 images) wrote the whole FAISS index again, so the
bytes written per added vector grew with the archive (quadratic total). With segments a commit
writes only its own vectors and compaction rewrites each vector about log10(archive / commit)
times. This script indexes 50k, 100k, 200k and 400k vectors through the real `IndexStore`
(SQLite metadata DB, real rows, fsynced segment files, default tier compaction) with the
default commit size, and reports bytes written and seconds per added vector at each size.

The vectors are random unit vectors of the real descriptor dimension (2,048: ResNet-50 + GeM);
their values do not matter to write cost. Embedding is not timed: only `IndexStore.add` (rows,
segment file, commit, compaction). The baseline is the same run through the previous `IndexStore`
(taken from git history: it wrote the whole index, fsynced, after every commit), measured in the
same run at the smaller sizes.

Usage::

    .venv/bin/python bench/indexing_cost.py                 # 50k..400k, results in bench/results
    .venv/bin/python bench/indexing_cost.py --quick         # smoke run, results in /tmp
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, write_report
from bench.search_faiss import machine_info
from indexer.db import ImageRow, make_engine, upgrade_db
from indexer.store import IndexStore

DIM = 2048
COMMIT = 2048  # the pipeline's default commit_every
BEFORE_SEGMENTS = "3ad15f2"  # the last commit whose IndexStore rewrote the whole index


def batches(total: int, commit: int, dim: int, seed: int) -> Any:
    """Random unit vectors, one commit at a time."""
    rng = np.random.default_rng(seed)
    for start in range(0, total, commit):
        n = min(commit, total - start)
        v = rng.standard_normal((n, dim), dtype=np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        yield start, v


def rows(start: int, n: int) -> list[ImageRow]:
    return [
        ImageRow(source="bench", path=f"t{start + i}", content_hash="-", width=256, height=256)
        for i in range(n)
    ]


def run_segments(total: int, commit: int, dim: int, workdir: Path) -> dict[str, Any]:
    """Index `total` vectors through IndexStore; bytes and seconds of `add` (with compaction)."""
    url = f"sqlite:///{workdir / 'metadata.db'}"
    upgrade_db(url)
    engine = make_engine(url)
    seconds, cpu_seconds = 0.0, 0.0
    tail_seconds, tail_bytes, tail_vectors = 0.0, 0, 0
    commits = -(-total // commit)
    tail_from = (commits - max(1, commits // 10)) * commit  # the last tenth of the commits
    with IndexStore.open(workdir / "idx", engine, "bench", dim, "Flat", writable=True) as store:
        for start, vectors in batches(total, commit, dim, seed=total):
            batch = rows(start, len(vectors))
            before_bytes = store.bytes_written
            t0, c0 = time.perf_counter(), time.process_time()
            store.add(batch, vectors)
            took = time.perf_counter() - t0
            seconds += took
            cpu_seconds += time.process_time() - c0
            if start >= tail_from:  # the marginal cost at this archive size
                tail_seconds += took
                tail_bytes += store.bytes_written - before_bytes
                tail_vectors += len(vectors)
        figures = {
            "vectors": total,
            "commits": commits,
            "seconds": seconds,
            "bytes_written": store.bytes_written,
            "bytes_by_compaction": store.bytes_merged,
            "segments_at_end": store.segment_count,
            "seconds_per_vector": seconds / total,
            "cpu_seconds_per_vector": cpu_seconds / total,
            "bytes_per_vector": store.bytes_written / total,
            "last_tenth_seconds_per_vector": tail_seconds / tail_vectors,
            "last_tenth_bytes_per_vector": tail_bytes / tail_vectors,
        }
    engine.dispose()
    return figures


def previous_store() -> Any:
    """`IndexStore` as it was before segments (git history), to run the baseline through it."""
    source = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{BEFORE_SEGMENTS}:indexer/store.py"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    module = types.ModuleType("indexer_store_before_segments")
    exec(compile(source, f"{BEFORE_SEGMENTS}:indexer/store.py", "exec"), module.__dict__)
    return module.IndexStore


def run_rewrite_baseline(total: int, commit: int, dim: int, workdir: Path) -> dict[str, Any]:
    """The same run through the previous IndexStore, which wrote the whole index every commit."""
    store_class = previous_store()
    url = f"sqlite:///{workdir / 'metadata.db'}"
    upgrade_db(url)
    engine = make_engine(url)
    index_dir = workdir / "idx"
    written, seconds = 0, 0.0
    with store_class.open(index_dir, engine, "bench", dim, "Flat", writable=True) as store:
        for start, vectors in batches(total, commit, dim, seed=total):
            batch = rows(start, len(vectors))
            t0 = time.perf_counter()
            store.add(batch, vectors)
            seconds += time.perf_counter() - t0
            written += (index_dir / store.filename(store.version)).stat().st_size
    engine.dispose()
    return {
        "vectors": total,
        "seconds": seconds,
        "bytes_written": written,
        "seconds_per_vector": seconds / total,
        "bytes_per_vector": written / total,
    }


def markdown(result: dict[str, Any]) -> str:
    m, s = result["machine"], result["settings"]
    lines = [
        "# Indexing cost per added vector",
        "",
        f"Machine: {m['cpu']}, {m['cores_usable']} usable cores, {m['ram_gib']} GiB RAM, "
        f"load at start {m['loadavg_start'][0]:.1f} (shared machine); {result['date']}; "
        f"faiss {m['faiss']}.",
        "",
        f"Random unit vectors, d = {s['dim']} (the ResNet-50 + GeM descriptor), Flat, commits of "
        f"{s['commit']} (the pipeline default), SQLite metadata DB, fsynced files, default tier "
        "compaction (10 segments of one size merge into one). Only `IndexStore.add` is timed "
        "(rows, segment file, commit, compaction); embedding is not.",
        "",
        "| vectors | commits | segments at end | bytes/vector | of which compaction | "
        "s/vector (us) | CPU s/vector (us) | last-tenth bytes/vector | "
        "last-tenth s/vector (us) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["segments"]:
        lines.append(
            f"| {r['vectors']:,} | {r['commits']} | {r['segments_at_end']} | "
            f"{r['bytes_per_vector']:,.0f} | {r['bytes_by_compaction'] / r['vectors']:,.0f} | "
            f"{r['seconds_per_vector'] * 1e6:,.1f} | "
            f"{r.get('cpu_seconds_per_vector', float('nan')) * 1e6:,.1f} | "
            f"{r['last_tenth_bytes_per_vector']:,.0f} | "
            f"{r['last_tenth_seconds_per_vector'] * 1e6:,.1f} |"
        )
    first, last = result["segments"][0], result["segments"][-1]
    lines += [
        "",
        f"Largest / smallest archive: bytes per vector x{result['ratio_bytes']:.2f}, seconds per "
        f"vector x{result['ratio_seconds']:.2f} wall, "
        f"x{result.get('ratio_cpu_seconds', float('nan')):.2f} CPU (goal: within 1.5x). Wall "
        "time includes waiting for the disk (fsync) and for other processes' use of the cores; "
        "CPU time is this process's own work, less sensitive to a shared machine. One vector is "
        f"{s['dim'] * 4 + 8:,} bytes (float32 + id), so {first['bytes_per_vector']:,.0f} and "
        f"{last['bytes_per_vector']:,.0f} bytes per vector mean each vector was written "
        f"{first['bytes_per_vector'] / (s['dim'] * 4 + 8):.2f} and "
        f"{last['bytes_per_vector'] / (s['dim'] * 4 + 8):.2f} times: once in its commit's "
        "segment, then once per compaction tier it went through (log10 of archive / commit).",
        "",
        f"Baseline: the same run through the previous `IndexStore` (git {BEFORE_SEGMENTS}: the "
        "whole index written again after every commit), same vectors, commit size and DB:",
        "",
        "| vectors | bytes/vector | s/vector (us) | bytes: previous / segments | "
        "time: previous / segments |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    by_n = {r["vectors"]: r for r in result["segments"]}
    for b in result["baseline"]:
        seg = by_n.get(b["vectors"])
        ratio_b = f"{b['bytes_per_vector'] / seg['bytes_per_vector']:.2f}" if seg else "-"
        ratio_t = f"{b['seconds_per_vector'] / seg['seconds_per_vector']:.2f}" if seg else "-"
        lines.append(
            f"| {b['vectors']:,} | {b['bytes_per_vector']:,.0f} | "
            f"{b['seconds_per_vector'] * 1e6:,.1f} | {ratio_b} | {ratio_t} |"
        )
    big = result["settings"]["sizes"][-1]
    commits = -(-big // s["commit"])
    projected = (commits + 1) / 2 * (s["dim"] * 4 + 8)
    lines += [
        "",
        f"The baseline's bytes per vector grow linearly with the archive (about (commits + 1) / 2 "
        f"whole vectors each): at {big:,} vectors that is {projected:,.0f} bytes per vector "
        f"({projected * big / 1e9:,.0f} GB in all), not measured here.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50_000, 100_000, 200_000, 400_000])
    parser.add_argument("--baseline-sizes", type=int, nargs="+", default=[25_000, 50_000])
    parser.add_argument("--dim", type=int, default=DIM)
    parser.add_argument("--commit", type=int, default=COMMIT)
    parser.add_argument("--quick", action="store_true", help="small sizes; results in /tmp")
    parser.add_argument("--workdir", type=Path, default=None, help="where files are written")
    parser.add_argument("--note", default="", help="conditions of the run, for the report")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.baseline_sizes, args.dim = [5_000, 10_000], [5_000, 10_000], 256
    faiss.omp_set_num_threads(len(os.sched_getaffinity(0)))
    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "settings": {"dim": args.dim, "commit": args.commit, "sizes": args.sizes},
        "segments": [],
        "baseline": [],
        "note": args.note,
    }
    for n in args.sizes:
        with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
            figures = run_segments(n, args.commit, args.dim, Path(tmp))
        result["segments"].append(figures)
        print(f"segments  {n:>8,}: {figures}", flush=True)
    for n in args.baseline_sizes:
        with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
            figures = run_rewrite_baseline(n, args.commit, args.dim, Path(tmp))
        result["baseline"].append(figures)
        print(f"rewrite   {n:>8,}: {figures}", flush=True)
    seg = result["segments"]
    result["ratio_bytes"] = seg[-1]["bytes_per_vector"] / seg[0]["bytes_per_vector"]
    result["ratio_seconds"] = seg[-1]["seconds_per_vector"] / seg[0]["seconds_per_vector"]
    result["ratio_cpu_seconds"] = (
        seg[-1]["cpu_seconds_per_vector"] / seg[0]["cpu_seconds_per_vector"]
    )
    text = markdown(result)
    if args.note:
        text += f"\nConditions of this run: {args.note}\n"
    if args.quick:
        out = Path(tempfile.gettempdir()) / "indexing_cost.md"
        out.write_text(text)
        print(text, f"\n(quick run: {out})")
        return
    write_report("indexing_cost", result, text)
    print(text)


if __name__ == "__main__":
    main()
