"""Benchmark the scene classifiers against the plain baseline at equal budget.

Why: the papers report DDRL-AM (Li et al., Remote Sensing 2020, doi:10.3390/rs12091366), PCL
(Chen et al., NeurIPS 2021, https://openreview.net/forum?id=NWYlZ5z8Q-R) and LAFE (Shi et al.,
ACM MM 2020, doi:10.1145/3394171.3413883) as improvements over the same backbone trained
plainly. This script measures that claim on UCM (80 % train) and NWPU-RESISC12 (20 % train),
ImageNet-initialised (default backbone: `model.backbones.default_backbone()`, EfficientNet-Lite0
unless torchvision's ResNet-50 file is here), OA mean +- std over seeded splits, one table.

Pairs (each method and its baseline share backbone, data, split, seed, image size,
augmentation, frozen stages, optimiser and number of passes over the training images):
  DDRL-AM (step 1 E epochs + step 2 E epochs)  vs  plain, 2E epochs
  PCL     (E epochs)                           vs  plain, E epochs
  LAFE    (E epochs)                           vs  plain, E epochs
On a CPU one optimiser serves all (Adam AMSGrad at 1e-3, DDRL-AM keeping its paper split of
0.1 x for the RGB trunk), so PCL and LAFE share one plain run; `--full` runs the papers'
protocol and recipes (each baseline then takes its method's recipe), for a GPU.

Usage::

    .venv/bin/python bench/classifiers.py                 # CPU budget, results in bench/results
    .venv/bin/python bench/classifiers.py --quick         # smoke run, results in /tmp
    .venv/bin/python bench/classifiers.py --full          # papers' protocol (GPU)
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from model.backbones import default_backbone, get_backbone  # noqa: E402
from model.classifiers.base import Recipe  # noqa: E402
from model.classifiers.data import load_image_bank  # noqa: E402
from model.classifiers.evaluation import (  # noqa: E402
    dataset_for,
    machine_description,
    mean_std,
    test_report,
)
from model.classifiers.registry import get_method  # noqa: E402
from model.classifiers.training import TrainConfig, train_classifier  # noqa: E402
from model.datasets import discover_dataset, stratified_split  # noqa: E402
from model.device import best_device  # noqa: E402

log = logging.getLogger("bench.classifiers")
RESULTS = REPO / "bench" / "results"
CPU_RECIPE = Recipe("adam-amsgrad", lr=1e-3, weight_decay=0.0, schedule="step", step_epochs=10)

FULL_COMMAND = (
    ".venv/bin/python bench/classifiers.py --full --seeds 0 1 2 --threads 8 "
    "--out bench/results/classifiers_gpu"
)
GPU_RECIPE = f"""\
Full protocol (`--full`, on a GPU; papers' recipes, ImageNet initialisation):
- Data: all classes and images; UCM 80 % train (21 x 100 images), NWPU-RESISC12 20 % train
  (`--nwpu-ratio 0.1` for the 10 % protocol); the backbone's native input size (224 for
  EfficientNet-Lite0 and ResNet-50); nothing frozen; seeds 0, 1, 2 (each a stratified split).
- DDRL-AM: step 1 40 epochs, step 2 40 epochs; Adam AMSGrad (0.9, 0.999, 1e-8), RGB trunk 1e-4,
  SFT + FC 1e-3 x0.1 every 10 epochs; CE + 0.5 center loss (centers SGD 0.5); batch 32.
  Baseline: plain, 80 epochs, same optimiser.
- PCL: SGD momentum 0.9, wd 5e-4, cosine, lr 0.1 x batch/256; gamma 0.7, alpha 1, beta 2;
  40 epochs. Baseline: plain, same recipe and epochs.
- LAFE: SGD momentum 0.9, wd 5e-4, lr 0.0015 x batch/16, x0.1 every 40 epochs; 200 epochs
  (paper), batch 16, paired sampler. Baseline: plain, same recipe.
- Command: `{FULL_COMMAND}` (add `--backbone resnet50` after `rsir weights fetch resnet50` for
  the papers' backbone). Not run yet: an estimate of a few GPU-hours for 3 seeds, most of it
  LAFE and its baseline at 200 epochs, more than a 15-minute GPU lease holds. The report names
  the device it ran on.
"""


@dataclass(frozen=True)
class Run:
    """One trained model of the table; `recipe_of` is whose paper recipe it takes under --full."""

    key: str
    method: str
    epoch_factor: int  # epochs = factor x E (the DDRL-AM baseline gets 2E)
    recipe_of: str


RUNS = (
    Run("ddrl-am", "ddrl-am", 1, "ddrl-am"),
    Run("plain-2E", "plain", 2, "ddrl-am"),
    Run("pcl", "pcl", 1, "pcl"),
    Run("plain-pcl", "plain", 1, "pcl"),
    Run("lafe", "lafe", 1, "lafe"),
    Run("plain-lafe", "plain", 1, "lafe"),
)
PAIRS = (("ddrl-am", "plain-2E"), ("pcl", "plain-pcl"), ("lafe", "plain-lafe"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--backbone", default=None, help="default: default_backbone()")
    parser.add_argument("--no-pretrained", action="store_true", help="random initialisation")
    parser.add_argument("--image-size", type=int, default=96, help="0: the backbone's native")
    parser.add_argument("--epochs", type=int, default=2, help="E (see the pairs)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--freeze-stages", type=int, default=3, help="of the trunk's 4 stages")
    parser.add_argument("--classes", type=int, default=0, help="first N classes; 0: all")
    parser.add_argument("--ucm-per-class", type=int, default=15, help="0: all")
    parser.add_argument("--nwpu-per-class", type=int, default=25, help="0: all")
    parser.add_argument("--nwpu-ratio", type=float, default=0.2)
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--workers", type=int, default=2, help="decoding worker processes")
    parser.add_argument(
        "--runs", nargs="+", default=[r.key for r in RUNS], choices=[r.key for r in RUNS],
        help="which, in this order (a time-limited run finishes the first ones)",
    )  # fmt: skip
    parser.add_argument("--datasets", nargs="+", default=["ucm", "nwpu"], choices=["ucm", "nwpu"])
    parser.add_argument(
        "--schedule", choices=["step", "cosine"], default="step",
        help="the one optimiser's schedule (step: x0.1 every 10 epochs; cosine over the run)",
    )  # fmt: skip
    parser.add_argument("--lr", type=float, default=CPU_RECIPE.lr, help="the one optimiser's")
    parser.add_argument(
        "--parallel", action=argparse.BooleanOptionalAction, default=False,
        help="one process per dataset and seed (a GPU serves them at once), merged at the end",
    )  # fmt: skip
    parser.add_argument("--limit-s", type=float, default=0, help="--parallel: cut each after")
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results/...")
    parser.add_argument("--quick", action="store_true", help="smoke run into /tmp")
    parser.add_argument("--full", action="store_true", help="papers' protocol (GPU)")
    parser.add_argument(
        "--render", type=Path, default=None, help="only rewrite the .md from this results JSON"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.classes, args.ucm_per_class, args.nwpu_per_class = 1, 2, 10, 15
        args.image_size = 64
        args.out = args.out or Path("/tmp/rsir_bench_classifiers")
    if args.full:
        args.image_size, args.epochs, args.freeze_stages = 0, 40, 0
        args.classes, args.ucm_per_class, args.nwpu_per_class = 0, 0, 0
    args.seeds = args.seeds if args.seeds is not None else [0]
    args.out = args.out or RESULTS / "classifiers"
    args.backbone = args.backbone or default_backbone()
    args.image_size = args.image_size or get_backbone(args.backbone).native_size
    return args


def train_config(run: Run, args: argparse.Namespace, seed: int) -> TrainConfig:
    """The run's config: CPU budget with one optimiser, or the paper recipe under --full."""
    epochs = args.epochs * run.epoch_factor
    if args.full and run.recipe_of == "lafe":
        epochs = 200  # Shi et al.'s schedule
    recipe = get_method(run.recipe_of).recipe(args.batch_size) if args.full else one_recipe(args)
    return TrainConfig(
        method=run.method,
        backbone=args.backbone,
        image_size=args.image_size,
        epochs=epochs,
        batch_size=16 if args.full and run.recipe_of == "lafe" else args.batch_size,
        seed=seed,
        recipe=recipe,
        freeze_stages=args.freeze_stages,
        pretrained=not args.no_pretrained,
        device="auto",
        progress=False,
    )


def one_recipe(args: argparse.Namespace) -> Recipe:
    """The one optimiser every run shares outside --full (CPU_RECIPE, schedule and lr as asked)."""
    return replace(CPU_RECIPE, schedule=args.schedule, lr=args.lr)


def _signature(config: TrainConfig) -> str:
    """Runs with equal signatures are the same training (PCL's and LAFE's baselines on a CPU)."""
    return json.dumps({k: v for k, v in config.to_dict().items() if k != "name"}, sort_keys=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.render is not None:
        rendered: dict[str, Any] = json.loads(args.render.read_text())
        args.render.with_suffix(".md").write_text(markdown(rendered))
        return rendered
    if args.parallel:
        return run_parallel(args, argv or sys.argv[1:])
    torch.set_num_threads(args.threads)
    args.out.with_suffix(".partial.json").unlink(missing_ok=True)
    started = time.perf_counter()
    datasets = [
        d
        for d in (("ucm", 0.8, args.ucm_per_class), ("nwpu", args.nwpu_ratio, args.nwpu_per_class))
        if d[0] in args.datasets
    ]
    by_key = {r.key: r for r in RUNS}
    runs = [by_key[key] for key in dict.fromkeys(args.runs)]  # in the order asked
    results: dict[str, Any] = {"datasets": {}}
    device = best_device("auto")
    for kind, ratio, per_class in datasets:
        all_classes = discover_dataset(kind, args.data_root).class_names
        classes = all_classes[: args.classes] if args.classes else None
        images = dataset_for(kind, args.data_root, per_class or None, classes)
        bank = load_image_bank(
            images.paths, images.labels, args.image_size, num_workers=args.workers
        )
        figures: dict[str, dict[str, Any]] = {r.key: {"oa": [], "seconds": []} for r in runs}
        info: dict[str, Any] = {
            "train_fraction": ratio,
            "classes": images.class_names,
            "images": len(images),
            "unreadable": bank.unreadable,
            "split_seeds": [],
        }
        for seed in args.seeds:
            split = stratified_split(images.labels, ratio, seed)
            info.update(n_train=len(split.train), n_test=len(split.test))
            info["split_seeds"].append(seed)
            done: dict[str, tuple[float, float, str]] = {}
            failed: set[str] = set()
            for run in runs:
                config = train_config(run, args, seed)
                signature = _signature(config)
                if signature in failed:
                    continue
                if signature not in done:
                    try:
                        trained = train_classifier(images, config, bank=bank, split=split)
                    except Exception as exc:  # one method failing must not lose the others
                        log.exception("%s seed %d %s failed", kind, seed, run.key)
                        failed.add(signature)
                        figures[run.key].setdefault("errors", []).append(
                            f"seed {seed}: {type(exc).__name__}: {exc}"
                        )
                        _save_partial(args.out, kind, info, figures, budget_of(args))
                        continue
                    report = test_report(
                        trained.net,
                        bank,
                        split,
                        images.class_names,
                        trained.checkpoint.preprocessing,
                        device,
                    )
                    done[signature] = (
                        report.overall_accuracy,
                        trained.seconds,
                        trained.checkpoint.init,
                    )
                oa, seconds, init = done[signature]
                figures[run.key]["oa"].append(oa)
                figures[run.key]["seconds"].append(seconds)
                figures[run.key].update(
                    method=run.method,
                    backbone=args.backbone,
                    epochs=config.epochs,
                    init=init,
                    recipe=config.resolved_recipe().to_dict(),
                )
                log.info("%s seed %d %s: OA %.4f (%.0f s)", kind, seed, run.key, oa, seconds)
                _save_partial(args.out, kind, info, figures, budget_of(args))
        for fig in figures.values():
            fig["oa_mean_std"] = mean_std(fig["oa"])
        results["datasets"][kind] = info | {"runs": figures}
    results.update(
        budget=budget_of(args),
        machine=machine_description(),
        wall_seconds=time.perf_counter() - started,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    args.out.with_suffix(".md").write_text(markdown(results))
    log.info("wrote %s.json and .md in %.0f s", args.out, results["wall_seconds"])
    return results


def budget_of(args: argparse.Namespace) -> dict[str, Any]:
    """What the runs were given (backbone, sizes, epochs, optimiser), for the report."""
    return {
        "backbone": args.backbone,
        "pretrained": not args.no_pretrained,
        "image_size": args.image_size,
        "native_size": get_backbone(args.backbone).native_size,
        "E_epochs": args.epochs,
        "batch_size": args.batch_size,
        "freeze_stages": args.freeze_stages,
        "classes_per_dataset": args.classes or "all",
        "ucm_per_class": args.ucm_per_class or "all",
        "nwpu_per_class": args.nwpu_per_class or "all",
        "optimizer": "papers' recipes" if args.full else one_recipe(args).to_dict(),
        "torch_threads": args.threads,
        "full_protocol": args.full,
    }


def run_parallel(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """One child process per (dataset, seed), all at once, then one merged report.

    Why: on a GPU one small-batch training leaves the device mostly idle (it waits on Python
    and kernel launches), so six trainings side by side finish in little more than the time of
    one. Each child keeps its finished runs on disk; a child cut at `--limit-s` still reports
    them (from its .partial.json).
    """
    started = time.perf_counter()
    children = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for kind in args.datasets:
        for seed in args.seeds:
            out = args.out.with_name(f"{args.out.name}-{kind}-seed{seed}")
            for stale in (".json", ".partial.json"):  # an earlier run's must not be merged
                out.with_suffix(stale).unlink(missing_ok=True)
            # the caller's options, then this child's: argparse keeps an option's last value
            command = [sys.executable, __file__, *argv, "--no-parallel", "--datasets", kind,
                       "--seeds", str(seed), "--out", str(out)]  # fmt: skip
            if args.limit_s:
                command = ["timeout", str(int(args.limit_s)), *command]
            with out.with_suffix(".log").open("w") as log_file:  # the child keeps its copy
                child = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
            children.append((kind, seed, out, child))
    parts = []
    for kind, seed, out, child in children:
        code = child.wait()
        if out.with_suffix(".json").is_file():
            parts.append(json.loads(out.with_suffix(".json").read_text()))
        elif out.with_suffix(".partial.json").is_file():
            log.warning("%s seed %d stopped (exit %d): its finished runs only", kind, seed, code)
            parts.append(_from_partial(json.loads(out.with_suffix(".partial.json").read_text())))
        else:
            log.warning("%s seed %d finished no run (exit %d)", kind, seed, code)
    if not parts:
        raise SystemExit("no child finished a run; see the .log files beside --out")
    merged = merge_results(parts)
    merged["wall_seconds"] = time.perf_counter() - started
    merged["budget"]["parallel_processes"] = len(children)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(merged, indent=1))
    args.out.with_suffix(".md").write_text(markdown(merged))
    log.info("wrote %s.json and .md in %.0f s", args.out, merged["wall_seconds"])
    return merged


def _from_partial(partial: dict[str, Any]) -> dict[str, Any]:
    """A results-shaped dict from a child's .partial.json (it was cut before its report)."""
    datasets = {}
    for kind, done in partial.items():
        runs = {key: fig | {"oa_mean_std": mean_std(fig["oa"])} for key, fig in done["runs"].items()
                if fig["oa"]}  # fmt: skip
        datasets[kind] = done.get("dataset", {}) | {"runs": runs, "cut": True}
    return {"datasets": datasets, "budget": partial[next(iter(partial))].get("budget", {}),
            "machine": partial[next(iter(partial))]["machine"], "wall_seconds": 0.0}  # fmt: skip


def merge_results(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One results dict from several (each a dataset and seed): per-seed figures joined, in
    seed order; a run some seeds did not finish keeps the seeds that did."""
    merged: dict[str, Any] = {"datasets": {}, "budget": dict(parts[0]["budget"]),
                              "machine": parts[0]["machine"]}  # fmt: skip
    for part in sorted(parts, key=lambda p: min(
            d.get("split_seeds", [0])[0] for d in p["datasets"].values())):  # fmt: skip
        for kind, data in part["datasets"].items():
            target = merged["datasets"].setdefault(
                kind, {k: v for k, v in data.items() if k not in ("runs", "split_seeds")}
                | {"runs": {}, "split_seeds": []},
            )  # fmt: skip
            target["split_seeds"] += data.get("split_seeds", [])
            target["cut"] = bool(target.get("cut")) or bool(data.get("cut"))
            for key, fig in data["runs"].items():
                into = target["runs"].setdefault(key, {"oa": [], "seconds": [], "errors": []})
                into.update({k: v for k, v in fig.items()
                             if k not in ("oa", "seconds", "errors", "oa_mean_std")})  # fmt: skip
                into["oa"] += fig["oa"]
                into["seconds"] += fig["seconds"]
                into["errors"] += fig.get("errors", [])
    for data in merged["datasets"].values():
        for fig in data["runs"].values():
            fig["oa_mean_std"] = mean_std(fig["oa"])
    return merged


def _save_partial(
    out: Path, kind: str, info: dict[str, Any], figures: dict[str, Any], budget: dict[str, Any]
) -> None:
    """Keep each finished run on disk at once: a long run cut short still reports its figures."""
    out.parent.mkdir(parents=True, exist_ok=True)
    path = out.with_suffix(".partial.json")
    done = json.loads(path.read_text()) if path.is_file() else {}
    done[kind] = {
        "last_seed": info["split_seeds"][-1],
        "dataset": {k: v for k, v in info.items()},
        "runs": figures,
        "budget": budget,
        "machine": machine_description(),
    }
    path.write_text(json.dumps(done, indent=1))


def _pm(fig: dict[str, Any]) -> str:
    stats = fig["oa_mean_std"]
    spread = f" +- {100 * stats['std']:.2f} ({stats['n']} seeds)" if stats["n"] > 1 else " (1 seed)"
    return f"{100 * stats['mean']:.2f}{spread}"


def _budget_sentence(budget: dict[str, Any], first: dict[str, Any], machine: dict[str, Any]) -> str:
    """What a run outside the papers' protocol was given, in words."""
    optimizer = budget["optimizer"]
    size, native = budget["image_size"], budget["native_size"]
    frozen = budget["freeze_stages"]
    subset = (
        "all images"
        if budget["ucm_per_class"] == "all" and budget["nwpu_per_class"] == "all"
        else f"a class-balanced subset (UCM {budget['ucm_per_class']} images per class, "
        f"NWPU-RESISC12 {budget['nwpu_per_class']})"
    )
    where = (
        f"on {machine['gpu']}" if machine.get("gpu") else "cut to fit about 20 minutes on 2 cores"
    )
    return (
        f"**Not the papers' protocol** ({where}): {size} x {size} inputs (native {native}); "
        + (
            f"the trunk's first {frozen} of 4 stages frozen (ImageNet weights, batch-norm "
            "statistics kept); "
            if frozen
            else "nothing frozen; "
        )
        + f"{budget['classes_per_dataset']} classes, {subset}; E = {budget['E_epochs']} "
        f"epoch(s); batch {budget['batch_size']}; one optimiser for all (Adam AMSGrad, lr "
        f"{optimizer['lr']:g}, {optimizer['schedule']} schedule"
        + (" x0.1 every 10 epochs" if optimizer["schedule"] == "step" else " over each run")
        + f", DDRL-AM's RGB trunk 0.1 x as in its paper); seeds {first['split_seeds']}"
        + (
            f", {budget['parallel_processes']} trainings side by side on the device"
            if budget.get("parallel_processes")
            else ""
        )
        + ". The papers train 40 (DDRL-AM, PCL) to 200 (LAFE) epochs; see the full protocol "
        "below."
    )


def markdown(results: dict[str, Any]) -> str:
    """The report: machine, initialisation, what was cut, one table, the GPU protocol."""
    budget, machine = results["budget"], results["machine"]
    first = next(iter(results["datasets"].values()))
    datasets = results["datasets"].values()
    inits = sorted({fig["init"] for data in datasets for fig in data["runs"].values()})
    lines = [
        "# Scene classifiers vs the plain baseline (equal budget)",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, "
        f"torch {machine['torch']} with {budget['torch_threads']} thread(s), "
        f"GPU: {machine['gpu'] or 'none'}. Date: {machine['date']}. "
        f"Wall time: {results['wall_seconds'] / 60:.1f} min.",
        "",
        f"Backbone: {budget['backbone']}. Initialisation: {', '.join(inits)}.",
        "",
    ]
    if not budget["full_protocol"]:
        lines += [_budget_sentence(budget, first, machine), ""]
    lines += [
        "| dataset (train) | method | epochs | OA % | plain baseline epochs | plain OA % | "
        "difference | train s/run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for kind, data in results["datasets"].items():
        runs = data["runs"]
        for method_key, base_key in PAIRS:
            if method_key not in runs or base_key not in runs:
                continue
            m, b = runs[method_key], runs[base_key]
            if not m["oa"] or not b["oa"]:
                continue  # failed or cut on every seed: said below the table
            diff = 100 * (m["oa_mean_std"]["mean"] - b["oa_mean_std"]["mean"])
            epochs = f"{m['epochs']} + {m['epochs']}" if m["method"] == "ddrl-am" else m["epochs"]
            lines.append(
                f"| {kind} ({round(100 * data['train_fraction'])} %, {data['n_train']} "
                f"train / {data['n_test']} test, {len(data['classes'])} classes) | "
                f"{m['method']} | {epochs} | {_pm(m)} | {b['epochs']} | {_pm(b)} | "
                f"{diff:+.2f} | {np.mean(m['seconds']):.0f} / {np.mean(b['seconds']):.0f} |"
            )
    for kind, data in results["datasets"].items():
        for key, fig in data["runs"].items():
            for error in fig.get("errors", []):
                lines.append(f"\n**{kind} {key} failed** ({error}).")
    cut = [kind for kind, data in results["datasets"].items() if data.get("cut")]
    if cut:
        lines += [
            "",
            f"**Cut by the time limit** ({', '.join(cut)}): a training process was stopped "
            "before its last run; each cell gives the seeds that finished (a method and its "
            "baseline may then differ in seeds).",
        ]
    lines += [
        "",
        "Each seed is one stratified split and one training seed, shared by a method and its "
        "baseline. DDRL-AM's step 1 (its attention network, a plain classifier) is trained for "
        "E epochs and step 2 for E more, so its baseline gets 2E epochs. Equal budget means "
        "equal passes over the training images, not equal compute: PCL runs the trunk twice "
        "per step (image and erased image) and LAFE adds attention heads; the last column gives "
        "the training seconds per run (method / baseline). With one optimiser for all, PCL's "
        "and LAFE's baselines are the same run. Per-run figures are in the JSON beside this "
        "file.",
        "",
        GPU_RECIPE,
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
