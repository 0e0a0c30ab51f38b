"""Benchmark the scene classifiers against their plain backbones at equal budget.

Why: the papers report DDRL-AM, PCL and LAFE as improvements over the same backbone trained
plainly. This script measures that claim on UCM (80 % train) and NWPU-RESISC12 (20 % train)
from random initialisation, OA mean +- std over seeded splits, one table.

Pairs (each method and its baseline share data, split, seed, image size, augmentation,
optimiser and number of passes over the training images):
  DDRL-AM (ResNet-18, step 1 E epochs + step 2 E epochs)  vs  plain ResNet-18, 2E epochs
  PCL     (ResNet-18, E epochs)                           vs  plain ResNet-18, E epochs
  LAFE    (ResNet-50, E epochs)                           vs  plain ResNet-50, E epochs
The CPU budget (reduced image size, classes, images and epochs; one optimiser for all, Adam
with AMSGrad at 1e-3, DDRL-AM keeping its paper split of 1e-4 for the RGB trunk) is printed into
the report; `--full` runs the papers' protocol and recipes (for a GPU).

Usage::

    .venv/bin/python bench/classifiers.py                 # CPU budget, results in bench/results
    .venv/bin/python bench/classifiers.py --quick         # smoke run, results in /tmp
    .venv/bin/python bench/classifiers.py --full          # papers' protocol (GPU, hours)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from model.classifiers.base import Recipe  # noqa: E402
from model.classifiers.data import load_image_bank  # noqa: E402
from model.classifiers.evaluation import (  # noqa: E402
    dataset_for,
    machine_description,
    mean_std,
    test_report,
)
from model.classifiers.training import TrainConfig, train_classifier  # noqa: E402
from model.datasets import discover_dataset, stratified_split  # noqa: E402
from model.device import best_device  # noqa: E402

log = logging.getLogger("bench.classifiers")
RESULTS = REPO / "bench" / "results"
CPU_RECIPE = Recipe("adam-amsgrad", lr=1e-3, weight_decay=0.0, schedule="step", step_epochs=10)

GPU_RECIPE = """\
Full protocol (run with `--full` on a GPU; papers' recipes, ImageNet weights if on disk):
- Data: all classes; UCM 80 % train (21 x 100 images), NWPU-RESISC12 20 % train (and 10 %:
  `--nwpu-ratio 0.1`); 224 x 224 inputs; seeds 0-9 (`--seeds 0 1 ... 9`).
- DDRL-AM: ResNet-18; step 1 40 epochs, step 2 40 epochs; Adam AMSGrad (0.9, 0.999, 1e-8),
  RGB trunk 1e-4, SFT + FC 1e-3 x0.1 every 10 epochs; CE + 0.5 center loss (centers SGD 0.5);
  batch 32. Baseline: plain ResNet-18, 80 epochs, same optimiser.
- PCL: ResNet-18/34/50; SGD momentum 0.9, wd 5e-4, cosine, lr 0.1 x batch/256; gamma 0.7,
  alpha 1, beta 2; 40 epochs. Baseline: plain ResNet, same recipe and epochs.
- LAFE: ResNet-50; SGD momentum 0.9, wd 5e-4, lr 0.0015 x batch/16, x0.1 every 40 epochs;
  200 epochs (paper), batch 16, paired sampler. Baseline: plain ResNet-50, same recipe.
- Command: `.venv/bin/python bench/classifiers.py --full --out bench/results/classifiers_gpu`
  (an estimate, not measured: a few GPU-hours on one H100 for 3 seeds, most of it LAFE and
  plain ResNet-50 at 200 epochs; record the device printed in the report).
"""


@dataclass(frozen=True)
class Run:
    """One trained model of the table."""

    key: str
    method: str
    backbone: str
    epoch_factor: int  # epochs = factor x E (the DDRL-AM baseline gets 2E)


RUNS = (
    Run("ddrl-am", "ddrl-am", "resnet18", 1),
    Run("plain-18x2", "plain", "resnet18", 2),
    Run("pcl", "pcl", "resnet18", 1),
    Run("plain-18", "plain", "resnet18", 1),
    Run("lafe", "lafe", "resnet50", 1),
    Run("plain-50", "plain", "resnet50", 1),
)
PAIRS = (("ddrl-am", "plain-18x2"), ("pcl", "plain-18"), ("lafe", "plain-50"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--image-size", type=int, default=48)
    parser.add_argument("--epochs", type=int, default=2, help="E (see the pairs)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--classes", type=int, default=3, help="first N classes of each set")
    parser.add_argument("--ucm-per-class", type=int, default=100)
    parser.add_argument("--nwpu-per-class", type=int, default=100)
    parser.add_argument("--nwpu-ratio", type=float, default=0.2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--runs", nargs="+", default=[r.key for r in RUNS])
    parser.add_argument("--out", type=Path, default=RESULTS / "classifiers")
    parser.add_argument("--quick", action="store_true", help="smoke run into /tmp")
    parser.add_argument("--full", action="store_true", help="papers' protocol (GPU)")
    parser.add_argument(
        "--render", type=Path, default=None, help="only rewrite the .md from this results JSON"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.classes, args.ucm_per_class, args.nwpu_per_class = 1, 2, 10, 15
        args.seeds, args.image_size = [0], 32
        args.out = Path("/tmp/rsir_bench_classifiers")
    if args.full:
        args.image_size, args.epochs, args.batch_size = 224, 40, 32
        args.classes, args.ucm_per_class, args.nwpu_per_class = 0, 0, 0
    return args


def train_config(run: Run, args: argparse.Namespace, seed: int) -> TrainConfig:
    """The run's config: CPU budget with one optimiser, or the paper recipe under --full."""
    epochs = args.epochs * run.epoch_factor
    if args.full and run.key in ("lafe", "plain-50"):
        epochs = 200  # paper 004's schedule
    recipe = None if args.full else CPU_RECIPE
    if args.full and run.method == "plain":
        # The baseline takes its method's recipe: equal budget includes the optimiser.
        from model.classifiers.registry import get_method

        paired = {"plain-18x2": "ddrl-am", "plain-18": "pcl", "plain-50": "lafe"}[run.key]
        recipe = get_method(paired).recipe(args.batch_size)
    return TrainConfig(
        method=run.method,
        backbone=run.backbone,
        image_size=args.image_size,
        epochs=epochs,
        batch_size=16 if args.full and run.method == "lafe" else args.batch_size,
        seed=seed,
        recipe=recipe,
        pretrained=args.full,
        device="auto",
        progress=False,
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.render is not None:
        rendered: dict[str, Any] = json.loads(args.render.read_text())
        args.render.with_suffix(".md").write_text(markdown(rendered))
        return rendered
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    datasets = [("ucm", 0.8, args.ucm_per_class), ("nwpu", args.nwpu_ratio, args.nwpu_per_class)]
    runs = [r for r in RUNS if r.key in args.runs]
    results: dict[str, Any] = {"datasets": {}}
    for kind, ratio, per_class in datasets:
        all_classes = discover_dataset(kind, args.data_root).class_names
        classes = all_classes[: args.classes] if args.classes else None
        images = dataset_for(kind, args.data_root, per_class or None, classes)
        bank = load_image_bank(images.paths, images.labels, args.image_size)
        figures: dict[str, dict[str, Any]] = {r.key: {"oa": [], "seconds": []} for r in runs}
        for seed in args.seeds:
            split = stratified_split(images.labels, ratio, seed)
            for run in runs:
                config = train_config(run, args, seed)
                trained = train_classifier(images, config, bank=bank, split=split)
                report = test_report(
                    trained.net,
                    bank,
                    split,
                    images.class_names,
                    trained.checkpoint.preprocessing,
                    best_device("auto"),
                )
                figures[run.key]["oa"].append(report.overall_accuracy)
                figures[run.key]["seconds"].append(trained.seconds)
                figures[run.key].update(
                    method=run.method,
                    backbone=run.backbone,
                    epochs=config.epochs,
                    init=trained.checkpoint.init,
                    recipe=config.resolved_recipe().to_dict(),
                )
                log.info(
                    "%s seed %d %s: OA %.4f (%.0f s)",
                    kind,
                    seed,
                    run.key,
                    report.overall_accuracy,
                    trained.seconds,
                )
        for fig in figures.values():
            fig["oa_mean_std"] = mean_std(fig["oa"])
        results["datasets"][kind] = {
            "train_fraction": ratio,
            "classes": images.class_names,
            "images": len(images),
            "n_train": len(split.train),
            "n_test": len(split.test),
            "split_seeds": args.seeds,
            "runs": figures,
        }
    results.update(
        budget={
            "image_size": args.image_size,
            "E_epochs": args.epochs,
            "batch_size": args.batch_size,
            "classes_per_dataset": args.classes or "all",
            "ucm_per_class": args.ucm_per_class or "all",
            "nwpu_per_class": args.nwpu_per_class or "all",
            "optimizer": "papers' recipes" if args.full else CPU_RECIPE.to_dict(),
            "torch_threads": args.threads,
            "full_protocol": args.full,
        },
        machine=machine_description(),
        wall_seconds=time.perf_counter() - started,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    args.out.with_suffix(".md").write_text(markdown(results))
    log.info("wrote %s.json and .md in %.0f s", args.out, results["wall_seconds"])
    return results


def _pm(fig: dict[str, Any]) -> str:
    stats = fig["oa_mean_std"]
    return f"{100 * stats['mean']:.2f} +- {100 * stats['std']:.2f}"


def markdown(results: dict[str, Any]) -> str:
    """The report: budget, machine, one table, the GPU recipe."""
    budget, machine = results["budget"], results["machine"]
    lines = [
        "# Scene classifiers vs their plain backbones (equal budget)",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores (shared with other jobs), "
        f"torch {machine['torch']} with {budget['torch_threads']} thread(s), "
        f"GPU: {machine['gpu'] or 'none'}. Date: {machine['date']}. "
        f"Wall time: {results['wall_seconds'] / 60:.1f} min.",
        "",
        "Initialisation: **random** for every model (no ImageNet weights on this machine).",
        "",
    ]
    if not budget["full_protocol"]:
        lines += [
            "**CPU budget, not the papers' protocol.** Reduced to fit about 25 minutes on 2 "
            f"shared cores: {budget['image_size']} x {budget['image_size']} inputs; the first "
            f"{budget['classes_per_dataset']} classes of each set "
            f"(UCM {budget['ucm_per_class']} images per class, NWPU-RESISC12 "
            f"{budget['nwpu_per_class']} per class); E = {budget['E_epochs']} epoch(s); batch "
            f"{budget['batch_size']}; one optimiser for all (Adam AMSGrad, lr 1e-3, DDRL-AM's "
            "RGB trunk 1e-4 as in its paper). With so little training from scratch the "
            "figures check that every method trains and is scored end to end; they are too "
            "noisy to rank the methods, and say nothing about the papers' claims.",
            "",
        ]
    lines += [
        "| dataset (train) | method | backbone | epochs | OA % (mean +- std) | "
        "plain baseline | epochs | OA % (mean +- std) | difference | train s/run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for kind, data in results["datasets"].items():
        runs = data["runs"]
        for method_key, base_key in PAIRS:
            if method_key not in runs or base_key not in runs:
                continue
            m, b = runs[method_key], runs[base_key]
            diff = 100 * (m["oa_mean_std"]["mean"] - b["oa_mean_std"]["mean"])
            epochs = f"{m['epochs']} + {m['epochs']}" if m["method"] == "ddrl-am" else m["epochs"]
            lines.append(
                f"| {kind} ({round(100 * data['train_fraction'])} %, {data['n_train']} "
                f"train / {data['n_test']} test, {len(data['classes'])} classes) | "
                f"{m['method']} | {m['backbone']} | {epochs} | {_pm(m)} | "
                f"{b['method']} {b['backbone']} | {b['epochs']} | {_pm(b)} | {diff:+.2f} | "
                f"{np.mean(m['seconds']):.0f} / {np.mean(b['seconds']):.0f} |"
            )
    seeds = next(iter(results["datasets"].values()))["split_seeds"]
    lines += [
        "",
        f"Seeds {seeds}: each seed is one stratified split and one training seed, shared by "
        "a method and its baseline. DDRL-AM's step 1 (the attention ResNet-18) is trained for "
        "E epochs and step 2 for E more, so its baseline gets 2E epochs. Equal budget means "
        "equal passes over the training images, not equal compute: PCL runs the backbone "
        "twice per step (image and erased image) and LAFE adds attention heads to ResNet-50; "
        "the last column gives the training seconds per run (method / baseline). "
        "Per-run figures are in classifiers.json.",
        "",
        GPU_RECIPE,
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
