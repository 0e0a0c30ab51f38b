"""bench/gpu.sh on a machine without CUDA: it must stop at once with a clear reason."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_gpu_recipe_fails_clearly_without_cuda() -> None:
    done = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu.sh")],
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "no CUDA device" in done.stderr
    assert not (REPO / "bench" / "results" / "gpu").exists() or not any(
        (REPO / "bench" / "results" / "gpu").iterdir()
    )


def test_gpu_recipe_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(REPO / "bench" / "gpu.sh")], check=True)
