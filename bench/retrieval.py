"""Retrieval benchmark: ResNet-50 + GeM (baseline) against dual attention + GeM (paper 002) at an
equal budget (same epochs, size, seed, initialisation), split protocol, on UCM and NWPU-RESISC12.

The CPU budget (default) is far below the paper's: small images, two epochs, a capped number of
mined tuples per epoch. The GPU recipe (`--gpu-recipe`) is the full protocol.
Run: .venv/bin/python bench/retrieval.py [--image-size 64 --epochs 2 ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

from bench.common import DATA_ROOT, REPO, RESULTS, write_report
from indexer.evaluate import evaluate_retrieval
from model.machine import machine_info
from model.train_embedder import TrainConfig, train_embedder

PAPER_TABLE2 = {
    "ucm": {"ResNet-50": 0.82, "dual attention + GeM": 0.92},
    "nwpu": {"ResNet-50": 0.80, "dual attention + GeM": 0.89},
}
VARIANTS = {"ResNet-50 + GeM": False, "dual attention + GeM": True}
GPU_RECIPE = (
    "`rsir train --dataset {ucm|nwpu} --backbone resnet50 --image-size 256 --max-epochs 100 "
    "--batch-size 16 --negatives 5 --lr 1e-6` with ImageNet weights in the torch cache "
    "(`RSIR_IMAGENET_WEIGHTS=/path/resnet50-0676ba61.pth`), once with `--no-attention`, then "
    "`rsir evaluate --protocol split`; on NWPU-RESISC45 use the full 45-class archive."
)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train and evaluate both variants on each dataset; return the figures."""
    work = Path(args.work)
    rows: list[dict[str, Any]] = []
    for dataset in args.datasets:
        for name, attention in VARIANTS.items():
            cfg = TrainConfig(
                dataset=dataset,
                root=str(DATA_ROOT),
                backbone="resnet50",
                pooling="gem",
                attention=attention,
                image_size=args.image_size,
                batch_size=args.batch_size,
                max_epochs=args.epochs,
                lr=args.lr,
                negatives=args.negatives,
                queries_per_epoch=args.queries_per_epoch,
                mining_pool=args.mining_pool,
                seed=args.seed,
                pretrained=False,
                num_workers=2,
            )
            tag = f"{dataset}-{'att' if attention else 'base'}-{args.image_size}px-{args.epochs}ep"
            started = time.monotonic()
            ckpt = train_embedder(cfg, work / f"{tag}.pt")
            train_s = time.monotonic() - started
            results = evaluate_retrieval(
                checkpoint_path=ckpt,
                dataset=dataset,
                root=DATA_ROOT,
                out_dir=work / tag,
                batch_size=64,
                num_workers=2,
            )
            row = {
                "dataset": dataset,
                "method": name,
                "map": results["map"],
                "map_at_k": results["map_at_k"],
                "precision_at_k": results["precision_at_k"],
                "n_queries": results["n_queries"],
                "n_gallery": results["n_gallery"],
                "init": results["init"],
                "train_seconds": round(train_s, 1),
                "total_seconds": round(time.monotonic() - started, 1),
            }
            print(f"{dataset:5s} {name:22s} mAP {row['map']:.4f} ({row['total_seconds']} s)")
            rows.append(row)
    return {
        "budget": {
            "backbone": "resnet50",
            "image_size": args.image_size,
            "epochs": args.epochs,
            "batch_size_tuples": args.batch_size,
            "negatives": args.negatives,
            "queries_per_epoch": args.queries_per_epoch,
            "mining_pool": args.mining_pool,
            "lr": args.lr,
            "seed": args.seed,
            "init": "random (no ImageNet weights on this machine)",
            "protocol": "split: queries = 20 % test split, gallery = 80 % train split",
        },
        "rows": rows,
        "paper_table2": PAPER_TABLE2,
        "machine": machine_info(),
        "gpu_recipe": GPU_RECIPE,
    }


def markdown(figures: dict[str, Any]) -> str:
    """The short report."""
    b, m = figures["budget"], figures["machine"]
    lines = [
        "# Retrieval benchmark: ResNet-50 + GeM vs dual attention + GeM",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, GPU: {m['gpu']}; "
        f"torch {m['torch']}; date {m['date']}.",
        "",
        f"Budget (equal for both): ResNet-50, {b['image_size']} px, {b['epochs']} epochs, "
        f"{b['queries_per_epoch'] or 'all'} mined tuples per epoch (1 positive + "
        f"{b['negatives']} hard negatives) from a pool of {b['mining_pool']} train images "
        f"re-embedded each epoch, seed {b['seed']}, init: {b['init']}. "
        f"Protocol: {b['protocol']}; all images of each dataset.",
        "",
        "| dataset | method | mAP (ours, CPU budget) | mAP@10 | P@10 | paper (Table 2) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    by_key = {(r["dataset"], r["method"]): r for r in figures["rows"]}
    for (dataset, method), r in by_key.items():
        paper_key = "ResNet-50" if method.startswith("ResNet") else method
        paper = figures["paper_table2"].get(dataset, {}).get(paper_key, "-")
        lines.append(
            f"| {dataset} | {method} | {r['map']:.4f} | {r['map_at_k'].get('10', 0):.4f} | "
            f"{r['precision_at_k'].get('10', 0):.4f} | {paper} |"
        )
    lines.append("")
    for dataset in sorted({r["dataset"] for r in figures["rows"]}):
        base = by_key.get((dataset, "ResNet-50 + GeM"))
        att = by_key.get((dataset, "dual attention + GeM"))
        if base and att:
            paper = PAPER_TABLE2[dataset]
            paper_gain = paper["dual attention + GeM"] - paper["ResNet-50"]
            lines.append(
                f"- {dataset}: attention - baseline = {att['map'] - base['map']:+.4f} mAP "
                f"(paper, ImageNet init: {paper_gain:+.2f})."
            )
    total_min = sum(r["total_seconds"] for r in figures["rows"]) / 60
    lines += [
        "",
        "Chance level (a random ranking) is about 1/21 = 0.048 mAP on UCM and 1/12 = 0.083 on "
        "NWPU-RESISC12. These figures come from random initialisation and minutes of CPU "
        f"training ({total_min:.0f} min for the four runs, on cores shared with other work), "
        "far from the paper, which starts from ImageNet weights and trains for hours on a GPU. "
        "With one seed, differences of a hundredth of mAP are within seed noise: the table "
        "shows the pipeline end to end, not a test of the paper's claim. The budget is well "
        "below the issue's 90-minute guide because this session also had to run the other "
        "benchmarks on the same two cores; raise `--epochs`, `--queries-per-epoch` and "
        "`--mining-pool` to use more.",
        "",
        "Full protocol on a GPU (no GPU machine was lent to this session): "
        + figures["gpu_recipe"],
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--datasets", nargs="+", default=["ucm", "nwpu"])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--negatives", type=int, default=1)
    parser.add_argument("--queries-per-epoch", type=int, default=1000)
    parser.add_argument("--mining-pool", type=int, default=1680)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default=str(REPO / "var" / "bench-retrieval"))
    parser.add_argument("--render", action="store_true", help="Rewrite the report from JSON.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    figures = json.loads((RESULTS / "retrieval.json").read_text()) if args.render else run(args)
    json_path, md_path = write_report("retrieval", figures, markdown(figures))
    print(markdown(figures))
    print(f"written {json_path} and {md_path}")


if __name__ == "__main__":
    main()
