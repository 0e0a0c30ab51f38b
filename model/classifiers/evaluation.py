"""Classification figures: overall and per-class accuracy, confusion matrix, mean +- std.

`evaluate_classifier` follows the papers' protocol: the checkpoint is scored on the test part of
its own seeded split, and with `repeats` N > 1 its recipe is retrained on N - 1 further seeded
splits (seed + 1, ...) so that OA is reported as mean +- std over N splits.
"""

from __future__ import annotations

import json
import logging
import os
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.checkpoint import load_checkpoint
from model.classifiers.base import SceneClassifier
from model.classifiers.data import ImageBank, load_image_bank
from model.classifiers.registry import build_deployed
from model.classifiers.training import TrainConfig, train_classifier
from model.datasets import (
    LabeledImages,
    Split,
    discover_dataset,
    limit_per_class,
    save_split,
    stratified_split,
)
from model.device import best_device
from model.transforms import Preprocessing

log = logging.getLogger(__name__)


@dataclass
class ClassificationReport:
    """Figures of one test set."""

    overall_accuracy: float
    per_class_accuracy: dict[str, float]
    confusion: list[list[int]]
    class_names: list[str]
    n_test: int
    n_unreadable: int = 0  # test images that could not be read: skipped, counted here

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], classes: int) -> np.ndarray:
    """K x K counts: row = true class, column = predicted class."""
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)), 1)
    return matrix


def classification_report(
    y_true: Sequence[int], y_pred: Sequence[int], class_names: Sequence[str]
) -> ClassificationReport:
    """OA, per-class accuracy (recall; NaN-free: classes absent from the test set are left out)
    and the confusion matrix."""
    matrix = confusion_matrix(y_true, y_pred, len(class_names))
    totals = matrix.sum(axis=1)
    per_class = {
        name: float(matrix[i, i] / totals[i]) for i, name in enumerate(class_names) if totals[i]
    }
    n = int(totals.sum())
    oa = float(np.trace(matrix) / n) if n else 0.0
    return ClassificationReport(oa, per_class, matrix.tolist(), list(class_names), n)


def save_confusion(report: ClassificationReport, directory: Path, title: str = "") -> None:
    """confusion.json and confusion.png (row-normalised, matplotlib Agg) in `directory`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "confusion.json").write_text(json.dumps(report.to_dict(), indent=1))
    matrix = np.asarray(report.confusion, dtype=float)
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    k = len(report.class_names)
    side = max(4.0, 0.35 * k + 2)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), report.class_names, rotation=90, fontsize=7)
    ax.set_yticks(range(k), report.class_names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or f"OA {report.overall_accuracy:.4f}", fontsize=9)
    if k <= 25:
        for i in range(k):
            for j in range(k):
                if matrix[i, j]:
                    ax.text(
                        j,
                        i,
                        f"{rates[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=5,
                        color="white" if rates[i, j] > 0.5 else "black",
                    )
    fig.tight_layout()
    fig.savefig(directory / "confusion.png", dpi=120)
    plt.close(fig)


@torch.no_grad()
def predict_bank(
    net: SceneClassifier,
    bank: ImageBank,
    indices: Sequence[int],
    preprocessing: Preprocessing,
    device: torch.device,
    batch_size: int = 64,
) -> np.ndarray:
    """Predicted classes of the bank images at `indices` (through the method's
    `evaluation_logits`: DDRL-AM takes its maps from its cache)."""
    net.to(device).eval()
    predictions: list[np.ndarray] = []
    for start in range(0, len(indices), batch_size):
        chosen = list(indices[start : start + batch_size])
        images = bank.normalized(chosen, preprocessing).to(device)
        logits = net.evaluation_logits(images, [bank.hashes[i] for i in chosen])
        predictions.append(logits.argmax(dim=1).cpu().numpy())
    return np.concatenate(predictions) if predictions else np.zeros(0, dtype=int)


def test_report(
    net: SceneClassifier,
    bank: ImageBank,
    split: Split,
    class_names: Sequence[str],
    preprocessing: Preprocessing,
    device: torch.device,
) -> ClassificationReport:
    """Figures of `net` on the readable test images of `split` (the others are counted)."""
    test = bank.usable(split.test)
    predicted = predict_bank(net, bank, test, preprocessing, device)
    truth = bank.labels[torch.as_tensor(test, dtype=torch.long)].numpy()
    report = classification_report(truth.tolist(), predicted.tolist(), class_names)
    report.n_unreadable = len(split.test) - len(test)
    return report


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    array = np.asarray(values, dtype=float)
    std = float(array.std(ddof=1)) if len(array) > 1 else 0.0
    return {"mean": float(array.mean()) if len(array) else 0.0, "std": std, "n": len(array)}


def machine_description() -> dict[str, Any]:
    """Where a figure was made: host, CPU, cores, GPU, torch, date."""
    cpu = platform.processor() or "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
    }


def dataset_for(
    kind: str, root: Path, per_class: int | None, classes: Sequence[str] | None
) -> LabeledImages:
    """The dataset, cut to `per_class` images of the `classes` when those are given."""
    images = discover_dataset(kind, root)
    if per_class is not None or classes is not None:
        images = limit_per_class(images, per_class or len(images), classes)
    return images


def evaluate_classifier(
    checkpoint: Path,
    dataset: str,
    root: Path,
    out: Path,
    repeats: int = 1,
    device: str = "auto",
    progress: bool = True,
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    """Score a checkpoint on its split's test images (and N - 1 retrained seeded splits).

    Writes `results.json` (method, init, dataset, split seeds, machine, OA mean +- std, per-run
    figures) and, per run, `seed<N>/confusion.json`, `confusion.png` and `split.json` in `out`.
    """
    ckpt = load_checkpoint(checkpoint)
    if ckpt.kind != "classifier":
        raise ValueError(f"{checkpoint} holds a {ckpt.kind} checkpoint, not a classifier")
    train_config = TrainConfig.from_dict(ckpt.extra.get("train", {}))
    train_config.progress = progress
    train_config.device = device
    train_config.cache_dir = cache_dir
    images = dataset_for(dataset, root, train_config.per_class, train_config.classes)
    if images.class_names != ckpt.class_names:
        raise ValueError(
            f"{checkpoint} was trained on classes {ckpt.class_names}, the dataset at {root} has "
            f"{images.class_names}"
        )
    prep = ckpt.preprocessing
    target = best_device(device)
    bank = load_image_bank(images.paths, images.labels, prep.image_size, train_config.num_workers)
    split_info = ckpt.extra.get("split", {})
    first_seed = int(split_info.get("seed", train_config.seed))
    fraction = float(split_info.get("train_fraction", train_config.train_ratio))
    runs: list[dict[str, Any]] = []
    out.mkdir(parents=True, exist_ok=True)
    for i in range(max(repeats, 1)):
        seed = first_seed + i
        split = stratified_split(images.labels, fraction, seed)
        if i == 0:
            net = build_deployed(ckpt.config)
            net.load_state_dict(ckpt.state_dict)
            net.prepare_evaluation(cache_dir, prep)
            fp, init = ckpt.fingerprint, ckpt.init
        else:
            train_config.seed = seed
            retrained = train_classifier(
                images, train_config, out / f"seed{seed}" / "model.pt", bank=bank, split=split
            )
            net, fp, init = (
                retrained.net,
                retrained.checkpoint.fingerprint,
                retrained.checkpoint.init,
            )
        report = test_report(net, bank, split, images.class_names, prep, target)
        run_dir = out / f"seed{seed}"
        save_confusion(
            report,
            run_dir,
            f"{ckpt.config['method']} seed {seed}: OA {report.overall_accuracy:.4f}",
        )
        save_split(split, images, run_dir / "split.json")
        runs.append({"seed": seed, "fingerprint": fp, "init": init, **report.to_dict()})
        log.info("seed %d: OA %.4f", seed, report.overall_accuracy)
    per_class_mean = {
        name: float(
            np.mean(
                [r["per_class_accuracy"][name] for r in runs if name in r["per_class_accuracy"]]
            )
        )
        for name in images.class_names
    }
    results = {
        "method": ckpt.config["method"],
        "backbone": ckpt.config.get("backbone"),
        "checkpoint": str(checkpoint),
        "fingerprint": ckpt.fingerprint,
        "init": ckpt.init,
        "dataset": dataset,
        "root": str(root),
        "classes": images.class_names,
        "per_class_limit": train_config.per_class,
        "image_size": prep.image_size,
        "epochs": train_config.epochs,
        "train_fraction": fraction,
        "split_seeds": [r["seed"] for r in runs],
        "overall_accuracy": mean_std([r["overall_accuracy"] for r in runs]),
        "per_class_accuracy_mean": per_class_mean,
        "runs": runs,
        "machine": machine_description(),
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return results
