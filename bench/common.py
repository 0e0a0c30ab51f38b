"""Helpers shared by the benchmarks: where the data is, a timed indexing run into a fresh
index, and writing JSON + a markdown report."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from indexer.pipeline import IndexSummary, ProgressFn

REPO = Path(__file__).resolve().parents[1]
# RSIR_BENCH_RESULTS: another folder (bench/gpu.sh keeps GPU reports apart from the CPU ones).
RESULTS = Path(os.environ.get("RSIR_BENCH_RESULTS", REPO / "bench" / "results"))
DATA_ROOT = Path(os.environ.get("RSIR_DATA_ROOT", REPO.parent / "shared" / "data")).resolve()


def index_fresh(
    source: Path, checkpoint: Path, progress: ProgressFn | None = None, **options: Any
) -> tuple[IndexSummary, float]:
    """Index `source` into a fresh temporary index (removed after) with these IndexOptions;
    the run's summary and its wall seconds (DB, FAISS and index files included). Imports the
    indexer when called, so that a benchmark's parent process stays light."""
    from indexer.options import IndexOptions
    from indexer.pipeline import index_source

    work = Path(tempfile.mkdtemp(prefix="rsir-bench-index-"))
    try:
        started = time.perf_counter()
        summary = index_source(
            source, checkpoint, IndexOptions(index_dir=work, **options), progress=progress
        )
        return summary, time.perf_counter() - started
    finally:
        shutil.rmtree(work, ignore_errors=True)


def write_report(name: str, figures: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """Write bench/results/<name>.json and <name>.md; returns both paths."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path = RESULTS / f"{name}.json"
    md_path = RESULTS / f"{name}.md"
    json_path.write_text(json.dumps(figures, indent=1, default=str))
    md_path.write_text(markdown)
    return json_path, md_path


def resolved_runtime(checkpoint: Path, runtime: str) -> str:
    """What RSIR_RUNTIME=`runtime` runs for this checkpoint on the CPU ('torch',
    'openvino-fp32', ...): the choice the indexer and the service make (model/runtimes.py)."""
    from indexer.embedding import load_embedding_model

    return load_embedding_model(checkpoint, "cpu", runtime)[0].runtime
