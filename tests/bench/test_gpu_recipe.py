"""The GPU recipes (bench/gpu.sh, bench/gpu_accuracy.sh) on a machine without CUDA: each must
stop at once with a clear reason and write nothing."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO

RECIPES = ["gpu.sh", "gpu_accuracy.sh"]
GPU_RESULTS = REPO / "bench" / "results" / "gpu"


def _written() -> set[str]:
    return {str(p) for p in GPU_RESULTS.rglob("*")} if GPU_RESULTS.exists() else set()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
@pytest.mark.parametrize("recipe", RECIPES)
def test_gpu_recipe_fails_clearly_without_cuda(recipe: str) -> None:
    before = _written()
    done = subprocess.run(
        ["bash", str(REPO / "bench" / recipe)],
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "no CUDA device" in done.stderr
    assert _written() == before  # no report folder made for a device that is not there


@pytest.mark.parametrize("recipe", RECIPES)
def test_gpu_recipe_is_valid_bash(recipe: str) -> None:
    subprocess.run(["bash", "-n", str(REPO / "bench" / recipe)], check=True)
