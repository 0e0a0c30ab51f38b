"""Helpers shared by the benchmarks: where the data is, and writing JSON + a markdown report."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# RSIR_BENCH_RESULTS: another folder (bench/gpu.sh keeps GPU reports apart from the CPU ones).
RESULTS = Path(os.environ.get("RSIR_BENCH_RESULTS", REPO / "bench" / "results"))
DATA_ROOT = Path(os.environ.get("RSIR_DATA_ROOT", REPO.parent / "shared" / "data")).resolve()


def write_report(name: str, figures: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """Write bench/results/<name>.json and <name>.md; returns both paths."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path = RESULTS / f"{name}.json"
    md_path = RESULTS / f"{name}.md"
    json_path.write_text(json.dumps(figures, indent=1, default=str))
    md_path.write_text(markdown)
    return json_path, md_path
