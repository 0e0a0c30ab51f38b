"""Pictures of results: the precision-recall curve of an evaluation."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: files only
import matplotlib.pyplot as plt


def plot_pr_curves(
    curves: dict[str, tuple[Sequence[float], Sequence[float]]], title: str, path: Path
) -> Path:
    """Write a PNG with one interpolated PR curve per entry (label -> (recall, precision))."""
    fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=110)
    for label, (recall, precision) in curves.items():
        ax.plot(recall, precision, marker="o", markersize=3, label=label)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision (interpolated)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
