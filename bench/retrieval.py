"""Retrieval benchmark, ImageNet initialisation: off-the-shelf, GeM fine-tuned, dual attention +
GeM fine-tuned (Chen et al. 2021, doi:10.12677/csa.2021.113052) and each search-time refinement
on top, split protocol, several seeds; plus generalisation (trained on one dataset, all-vs-all on
the other).

The fine-tuning recipe is rsir's default CPU recipe (model/train_embedder.py): EfficientNet-Lite0
(ImageNet, from its pip package) with its first three stages frozen. Frozen stages give the same
output in every run, so their maps are computed once per dataset and kept on disk
(`--work`/stage-cache): each seed and variant then trains and evaluates only the trainable
stages. The cached evaluation is checked against the plain checkpoint path (`rsir evaluate`)
on real images in every run (cosine reported).

Run: .venv/bin/python bench/retrieval.py [--datasets ucm nwpu --seeds 0 1 2 ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script

from bench.common import DATA_ROOT, REPO, RESULTS, write_report
from indexer.evaluate import Refinements, refine, retrieval_metrics
from model.checkpoint import load_embedder
from model.datasets import LabeledImages, discover_dataset, stratified_split
from model.device import best_device
from model.embedder import Embedder, EmbedderConfig, build_embedder
from model.machine import machine_info
from model.train_embedder import TrainConfig, train_embedder
from model.train_inputs import stage_maps
from model.transforms import Preprocessing

CHANCE = {"ucm": 1 / 21, "nwpu": 1 / 12}
PAPER_TABLE2 = {"ucm": 0.92, "nwpu": 0.89}  # dual attention + GeM, ResNet-50, ImageNet, GPU
REFINEMENTS = {
    "PCA-whitening 256": Refinements(whitening="pca", whitening_dim=256),
    "Lw whitening 256": Refinements(whitening="lw", whitening_dim=256),
    "DBA 3": Refinements(dba=3),
    "alpha-QE 3": Refinements(qe=3),
    "DBA 3 + alpha-QE 3": Refinements(dba=3, qe=3),
    "Lw 256 + DBA 3 + alpha-QE 3": Refinements(whitening="lw", whitening_dim=256, dba=3, qe=3),
}


def descriptors(net: Embedder, maps: torch.Tensor, start: int, batch: int = 128) -> np.ndarray:
    """Unit descriptors of every image from its cached frozen-stage maps, on the net's device."""
    net.eval()
    device = next(net.parameters()).device
    out = []
    with torch.inference_mode():
        for i in range(0, len(maps), batch):
            x = maps[i : i + batch].to(device).float().contiguous(memory_format=torch.channels_last)
            out.append(net.embed_from(x, start).cpu().numpy())
    return np.vstack(out)


def check_against_full_path(
    net: Embedder, pre: Preprocessing, images: LabeledImages, cached: np.ndarray, n: int = 16
) -> float:
    """Mean cosine between cached-path descriptors and the checkpoint's own forward pass."""
    from model.imageio import read_image

    idx = np.linspace(0, len(images) - 1, n).astype(int)
    batch = torch.stack([pre.eval_transform()(read_image(images.paths[i])) for i in idx])
    net.eval()
    with torch.inference_mode():
        full = net(batch.to(next(net.parameters()).device)).cpu().numpy()
    return float((full * cached[idx]).sum(axis=1).mean())


def split_scores(
    vectors: np.ndarray,
    labels: np.ndarray,
    images: LabeledImages,
    seed: int,
    refinements: Refinements,
    fingerprint: str,
) -> float:
    split = stratified_split(images.labels, 0.8, seed)
    q, g = np.asarray(split.test), np.asarray(split.train)
    queries, gallery = refine(vectors[q], vectors[g], labels[g], refinements, fingerprint)
    return retrieval_metrics(queries, labels[q], gallery, labels[g], images.class_names).map


def all_vs_all(vectors: np.ndarray, labels: np.ndarray, images: LabeledImages) -> float:
    return retrieval_metrics(
        vectors, labels, vectors, labels, images.class_names, exclude_self=True
    ).map


def run(args: argparse.Namespace, save: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Train and score every (dataset, seed, variant); `save` gets the figures after each
    training, so that an interrupted run keeps what it measured."""
    work = Path(args.work)
    cache = work / "stage-cache"
    rows: list[dict[str, Any]] = []
    generalisation: list[dict[str, Any]] = []
    checks: list[float] = []
    datasets = {d: discover_dataset(d, DATA_ROOT) for d in args.datasets}
    backbone = args.backbone
    device = best_device(args.device)
    pre = Preprocessing.for_backbone(backbone, args.image_size)
    probe, init = build_embedder(EmbedderConfig(backbone, attention=False))
    probe.to(device)
    all_maps = {}
    for name, images in datasets.items():
        started = time.monotonic()
        maps, _ = stage_maps(
            probe.trunk,
            args.freeze_stages,
            images,
            pre,
            args.workers,
            device,
            cache,
            weights_id=f"{backbone}:{init}",
        )
        all_maps[name] = maps
        print(
            f"{name}: frozen-stage maps of {len(images)} images in "
            f"{time.monotonic() - started:.0f} s",
            flush=True,
        )
    # Every run's training recipe; each run sets its dataset, seed and attention.
    recipe = TrainConfig(
        dataset="",
        root=str(DATA_ROOT),
        backbone=backbone,
        image_size=args.image_size,
        ce_epochs=args.ce_epochs,
        max_epochs=args.metric_epochs,
        lr=args.lr,
        freeze_stages=args.freeze_stages,
        num_workers=args.workers,
        device=str(device),
        feature_cache=str(cache),
        batch_size=args.batch_size,
        negatives=2,
    )
    figures: dict[str, Any] = {
        "recipe": {
            "backbone": backbone,
            "init": init,
            "image_size": args.image_size,
            "freeze_stages": args.freeze_stages,
            "ce_epochs": args.ce_epochs,
            "metric_epochs": args.metric_epochs,
            "lr": args.lr,
            "batch_size": args.batch_size,
            "seeds": args.seeds,
            "protocol": "split: queries = 20 % test split, gallery = 80 % train split (per seed)",
        },
        "rows": rows,
        "generalisation": generalisation,
        "cache_check_mean_cosine": None,
        "machine": machine_info(),
    }
    for name, images in datasets.items():
        labels = np.asarray(images.labels)
        vectors = descriptors(probe, all_maps[name], args.freeze_stages)
        for seed in args.seeds:
            rows.append(
                {
                    "dataset": name,
                    "method": "off-the-shelf (GeM, no training)",
                    "seed": seed,
                    "train_seconds": 0.0,
                    "map": split_scores(vectors, labels, images, seed, Refinements(), "x"),
                }
            )
        for seed in args.seeds:
            for method, attention in (
                ("GeM fine-tuned", False),
                ("dual attention + GeM fine-tuned", True),
            ):
                cfg = replace(recipe, dataset=name, attention=attention, seed=seed)
                out = work / f"{name}-{'att' if attention else 'gem'}-seed{seed}.pt"
                started = time.monotonic()
                train_embedder(cfg, out)
                seconds = time.monotonic() - started
                net, ckpt = load_embedder(out)
                net.to(device)
                vectors = descriptors(net, all_maps[name], args.freeze_stages)
                checks.append(check_against_full_path(net, ckpt.preprocessing, images, vectors))
                row = {
                    "dataset": name,
                    "method": method,
                    "seed": seed,
                    "train_seconds": round(seconds, 1),
                    "map": split_scores(
                        vectors, labels, images, seed, Refinements(), ckpt.fingerprint
                    ),
                }
                print(
                    f"{name} seed {seed} {method}: mAP {row['map']:.4f} ({seconds:.0f} s)",
                    flush=True,
                )
                rows.append(row)
                figures["cache_check_mean_cosine"] = min(checks)
                save(figures)
                if attention:
                    for label, refinement in REFINEMENTS.items():
                        rows.append(
                            {
                                "dataset": name,
                                "method": f"{method} + {label}",
                                "seed": seed,
                                "train_seconds": round(seconds, 1),
                                "map": split_scores(
                                    vectors, labels, images, seed, refinement, ckpt.fingerprint
                                ),
                            }
                        )
                    for other, other_images in datasets.items():
                        if other == name or seed != args.seeds[0]:
                            continue
                        other_vectors = descriptors(net, all_maps[other], args.freeze_stages)
                        generalisation.append(
                            {
                                "trained_on": name,
                                "evaluated_on": other,
                                "protocol": "all-vs-all",
                                "map": all_vs_all(
                                    other_vectors, np.asarray(other_images.labels), other_images
                                ),
                                "off_the_shelf": all_vs_all(
                                    descriptors(probe, all_maps[other], args.freeze_stages),
                                    np.asarray(other_images.labels),
                                    other_images,
                                ),
                            }
                        )
                    save(figures)
    return figures


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds per (dataset, method)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["method"]), []).append(r)
    out = []
    for (dataset, method), rs in groups.items():
        maps = [r["map"] for r in rs]
        out.append(
            {
                "dataset": dataset,
                "method": method,
                "n": len(maps),
                "mean": statistics.fmean(maps),
                "std": statistics.stdev(maps) if len(maps) > 1 else 0.0,
                "train_seconds": statistics.fmean(r["train_seconds"] for r in rs),
            }
        )
    return out


def _also_section(relative: str) -> list[str]:
    """The summary table of another run's report (e.g. the same recipe on a GPU, all seeds)."""
    other = json.loads((RESULTS / relative).read_text())
    r, m = other["recipe"], other["machine"]
    lines = [
        f"## Same benchmark, another run: `{relative}`",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, GPU: {m['gpu']}; torch {m['torch']}; "
        f"date {m['date']}. Recipe: {r['backbone']} (init `{r['init']}`), {r['image_size']} px, "
        f"{r['freeze_stages']} frozen stages, {r['ce_epochs']} classification + "
        f"{r['metric_epochs']} contrastive epochs, lr {r['lr']}, seeds {r['seeds']}.",
        "",
        "| dataset | method | mAP mean | std | seeds | train s (mean) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for s in summarise(other["rows"]):
        lines.append(
            f"| {s['dataset']} | {s['method']} | {s['mean']:.4f} | {s['std']:.4f} | "
            f"{s['n']} | {s['train_seconds']:.0f} |"
        )
    for g in other.get("generalisation", []):
        lines.append(
            f"\nGeneralisation: trained on {g['trained_on']}, all-vs-all on "
            f"{g['evaluated_on']}: {g['map']:.4f} (off the shelf {g['off_the_shelf']:.4f})."
        )
    return lines


def markdown(figures: dict[str, Any]) -> str:
    r, m = figures["recipe"], figures["machine"]
    lines = [
        "# Retrieval benchmark (ImageNet initialisation)",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, GPU: {m['gpu']}; torch {m['torch']}; "
        f"date {m['date']}."
        + (
            ""
            if m["gpu"]
            else " The two cores were shared with other work during the run: "
            "training seconds are upper bounds."
        ),
        "",
        f"Recipe: {r['backbone']} (init `{r['init']}`), {r['image_size']} px, first "
        f"{r['freeze_stages']} stages frozen (cached), {r['ce_epochs']} normalised-softmax "
        f"classification epochs then {r['metric_epochs']} contrastive hard-negative epochs, "
        f"AdamW lr {r['lr']} with warm-up and cosine decay, flips/rotations/scale crops. "
        f"Seeds {r['seeds']} (each seed: its own split and training). {r['protocol']}.",
        "",
        "| dataset | method | mAP mean | std | seeds | train s (mean) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for s in summarise(figures["rows"]):
        lines.append(
            f"| {s['dataset']} | {s['method']} | {s['mean']:.4f} | {s['std']:.4f} | "
            f"{s['n']} | {s['train_seconds']:.0f} |"
        )
    lines += [
        "",
        "Chance: 1/21 = 0.048 (UCM), 1/12 = 0.083 (NWPU-RESISC12). Paper (Chen et al. "
        "2021, doi:10.12677/csa.2021.113052, Table 2, dual attention + GeM, ResNet-50, GPU): "
        "UCM 0.92, NWPU-RESISC45 0.89.",
        "",
    ]
    if figures["generalisation"]:
        lines += [
            "## Generalisation (trained on one, all-vs-all on the other, seed 0)",
            "",
            "| trained on | evaluated on | mAP | off-the-shelf mAP |",
            "| --- | --- | --- | --- |",
        ]
        for g in figures["generalisation"]:
            lines.append(
                f"| {g['trained_on']} | {g['evaluated_on']} | {g['map']:.4f} | "
                f"{g['off_the_shelf']:.4f} |"
            )
        lines.append("")
    lines.append(
        f"Cached-path check: descriptors from cached maps vs the checkpoint's own "
        f"forward pass on real images, lowest mean cosine {figures['cache_check_mean_cosine']}."
    )
    for other in figures.get("also", []):
        lines += ["", *_also_section(other)]
    lines += ["", *(f"- {note}" for note in figures.get("notes", []))]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--datasets", nargs="+", default=["ucm", "nwpu"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--image-size", type=int, default=192)
    parser.add_argument("--freeze-stages", type=int, default=3)
    parser.add_argument("--ce-epochs", type=int, default=4)
    parser.add_argument("--metric-epochs", type=int, default=0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="auto", help="auto: CUDA when present, else CPU")
    parser.add_argument("--workers", type=int, default=2, help="decoding worker processes")
    parser.add_argument("--name", default="retrieval", help="report name under bench/results")
    parser.add_argument("--work", default=str(REPO / "var" / "bench-retrieval"))
    parser.add_argument("--render", action="store_true", help="Rewrite the report from JSON.")
    parser.add_argument(
        "--append", action="store_true", help="Keep the saved rows of other runs (datasets)."
    )
    parser.add_argument("--note", action="append", default=[], help="A line for the report.")
    parser.add_argument(
        "--also",
        action="append",
        default=[],
        help="Another run's JSON (relative to bench/results) whose table the report shows too.",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    saved = RESULTS / f"{args.name}.json"
    if args.render:
        figures = json.loads(saved.read_text())
        figures["also"] = sorted({*figures.get("also", []), *args.also})
        write_report(args.name, figures, markdown(figures))
    else:
        old = json.loads(saved.read_text()) if args.append and saved.is_file() else None

        def save(partial: dict[str, Any]) -> None:
            merged = {**partial, "notes": list(args.note), "also": list(args.also)}
            if old is not None:
                merged["runs"] = [*old.get("runs", [old["recipe"]]), partial["recipe"]]
                merged["rows"] = [*old["rows"], *partial["rows"]]
                merged["generalisation"] = [*old["generalisation"], *partial["generalisation"]]
                merged["notes"] = [*old.get("notes", []), *args.note]
            write_report(args.name, merged, markdown(merged))

        save(run(args, save))
        figures = json.loads(saved.read_text())
    print(markdown(figures))


if __name__ == "__main__":
    main()
