"""`rsir train-classifier` and `rsir evaluate-classifier`: the scene classifiers of issue 4."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from model.backbones import list_backbones
from model.datasets import DATASET_KINDS
from rsir.settings import get_settings

app = typer.Typer()


def _methods() -> str:
    from model.classifiers.registry import list_methods

    return ", ".join(list_methods())


@app.command("train-classifier")
def train_classifier_command(
    out: Annotated[Path, typer.Option(help="Checkpoint to write (.pt).")],
    method: Annotated[str, typer.Option(help=f"One of {_methods()}.")] = "plain",
    dataset: Annotated[str, typer.Option(help=f"One of {', '.join(DATASET_KINDS)}.")] = "ucm",
    root: Annotated[Path | None, typer.Option(help="Data root (default: RSIR_DATA_ROOT).")] = None,
    backbone: Annotated[
        str | None,
        typer.Option(
            help=f"One of {', '.join(list_backbones())}; default: resnet50 when its ImageNet "
            "file is here, else efficientnet_lite0 (whose weights every install has)."
        ),
    ] = None,
    train_ratio: Annotated[
        float, typer.Option(help="Train fraction: UCM 0.8, NWPU 0.1 or 0.2 (papers).")
    ] = 0.8,
    image_size: Annotated[
        int | None, typer.Option(help="Square input size in pixels; default: the backbone's.")
    ] = None,
    max_epochs: Annotated[int, typer.Option(help="Training epochs (DDRL-AM: per step).")] = 40,
    batch_size: Annotated[int, typer.Option()] = 32,
    seed: Annotated[int, typer.Option(help="Split and training seed.")] = 0,
    per_class: Annotated[int | None, typer.Option(help="Use N images per class.")] = None,
    classes: Annotated[
        str | None, typer.Option(help="Comma-separated class names to keep (quick runs).")
    ] = None,
    lr: Annotated[float | None, typer.Option(help="Base learning rate; default: paper.")] = None,
    attention_epochs: Annotated[
        int | None, typer.Option(help="DDRL-AM step 1 epochs (default: max-epochs).")
    ] = None,
    freeze_stages: Annotated[
        int, typer.Option(help="Keep the backbone's first N of 4 stages fixed (fast on a CPU).")
    ] = 0,
    pretrained: Annotated[
        bool, typer.Option(help="ImageNet weights (--no-pretrained: random initialisation).")
    ] = True,
    cache_dir: Annotated[Path, typer.Option(help="DDRL-AM Grad-CAM map cache.")] = Path(
        "var/cache/gradcam"
    ),
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train a scene classifier on the train part of a seeded stratified split."""
    from dataclasses import replace

    from model.classifiers.evaluation import dataset_for, machine_description, test_report
    from model.classifiers.registry import get_method
    from model.classifiers.training import TrainConfig, train_classifier

    settings = get_settings()
    recipe_of = get_method(method).recipe
    wanted = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
    config = TrainConfig(
        method=method,
        backbone=backbone,
        image_size=image_size,
        epochs=max_epochs,
        batch_size=batch_size,
        seed=seed,
        train_ratio=train_ratio,
        attention_epochs=attention_epochs,
        freeze_stages=freeze_stages,
        per_class=per_class,
        classes=wanted,
        pretrained=pretrained,
        weights_path=settings.imagenet_weights,
        device=settings.device,
        cache_dir=cache_dir,
        num_workers=settings.num_workers,
        progress=progress,
    )
    if lr is not None:
        config.recipe = replace(recipe_of(batch_size), lr=lr)
    images = dataset_for(dataset, root or settings.data_root, per_class, wanted)
    trained = train_classifier(images, config, out)
    report = test_report(
        trained.net,
        trained.bank,
        trained.split,
        images.class_names,
        trained.checkpoint.preprocessing,
        next(trained.net.parameters()).device,
    )
    ckpt = trained.checkpoint
    results = {
        "method": method,
        "backbone": ckpt.config["backbone"],
        "checkpoint": str(out),
        "fingerprint": ckpt.fingerprint,
        "init": ckpt.init,
        "dataset": dataset,
        "classes": images.class_names,
        "image_size": trained.checkpoint.preprocessing.image_size,
        "epochs": max_epochs,
        "train_fraction": train_ratio,
        "split_seeds": [seed],
        "n_train": len(trained.split.train),
        "train_seconds": trained.seconds,
        "test": report.to_dict(),
        "machine": machine_description(),
    }
    results_path = out.with_name(out.stem + ".results.json")
    results_path.write_text(json.dumps(results, indent=1))
    typer.echo(
        f"{method} ({ckpt.config['backbone']}, init {ckpt.init}) on {len(trained.split.train)} "
        f"{dataset} images: test OA {report.overall_accuracy:.4f} on {report.n_test}; "
        f"checkpoint written to {out}, figures to {results_path}"
    )


@app.command("evaluate-classifier")
def evaluate_classifier_command(
    checkpoint: Annotated[Path, typer.Option(help="Classifier checkpoint (.pt).")],
    out: Annotated[Path, typer.Option(help="Folder for results.json and confusion matrices.")],
    dataset: Annotated[str, typer.Option(help=f"One of {', '.join(DATASET_KINDS)}.")] = "ucm",
    root: Annotated[Path | None, typer.Option(help="Data root (default: RSIR_DATA_ROOT).")] = None,
    repeats: Annotated[
        int, typer.Option(help="Seeded splits; beyond the first, the recipe is retrained.")
    ] = 1,
    cache_dir: Annotated[Path, typer.Option(help="DDRL-AM Grad-CAM map cache.")] = Path(
        "var/cache/gradcam"
    ),
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """OA, per-class accuracy and confusion matrix (JSON + PNG), mean +- std over splits."""
    from model.classifiers.evaluation import evaluate_classifier

    settings = get_settings()
    results = evaluate_classifier(
        checkpoint,
        dataset,
        root or settings.data_root,
        out,
        repeats=repeats,
        device=settings.device,
        progress=progress,
        cache_dir=cache_dir,
    )
    oa = results["overall_accuracy"]
    typer.echo(
        f"{results['method']} on {dataset}: OA {oa['mean']:.4f} +- {oa['std']:.4f} over "
        f"{oa['n']} split(s) {results['split_seeds']}; results in {out / 'results.json'}"
    )
