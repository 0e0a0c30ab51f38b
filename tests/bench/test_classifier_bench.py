"""bench/classifiers.py --parallel: one process per dataset and seed, one merged report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DATA_ROOT, REPO


@pytest.mark.real_data
def test_parallel_children_merge_into_one_report_per_seed(tmp_path: Path) -> None:
    out = tmp_path / "classifiers"
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "classifiers.py"), "--quick", "--parallel",
         "--datasets", "ucm", "--seeds", "0", "1", "--runs", "pcl", "plain-pcl", "--threads", "1",
         "--workers", "0", "--schedule", "cosine", "--data-root", str(DATA_ROOT),
         "--out", str(out)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    merged = json.loads(out.with_suffix(".json").read_text())
    ucm = merged["datasets"]["ucm"]
    assert ucm["split_seeds"] == [0, 1]
    run = ucm["runs"]["plain-pcl"]
    assert len(run["oa"]) == 2 and all(0.0 <= oa <= 1.0 for oa in run["oa"])
    assert run["oa_mean_std"]["n"] == 2
    assert run["recipe"]["schedule"] == "cosine"
    assert merged["budget"]["parallel_processes"] == 2
    for seed in (0, 1):  # each child wrote its own report, not one shared file
        child = json.loads((tmp_path / f"classifiers-ucm-seed{seed}.json").read_text())
        assert child["datasets"]["ucm"]["split_seeds"] == [seed]
        assert child["datasets"]["ucm"]["runs"]["plain-pcl"]["oa"] == [run["oa"][seed]]
    assert "(2 seeds)" in out.with_suffix(".md").read_text()
