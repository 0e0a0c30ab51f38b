"""`rsir train-classifier` and `rsir evaluate-classifier`: the scene classifiers of issue 4."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from model.backbones import list_backbones
from model.datasets import DATASET_KINDS
from rsir_common.options import DATA_ROOT, SettingOverrides, opt, setting_options
from rsir_common.settings import get_settings

app = typer.Typer()
DATASET = opt("dataset", help=f"One of {', '.join(DATASET_KINDS)}.")
CACHE_DIR = opt("cache_dir", help="Caches (DDRL-AM Grad-CAM maps).")


def _methods() -> str:
    from model.classifiers.registry import list_methods

    return ", ".join(list_methods())


@app.command("train-classifier")
@setting_options(
    opt("classifier_method", "--method", help=f"One of {_methods()}."),
    DATASET,
    DATA_ROOT,
    opt(
        "backbone",
        help=f"One of {', '.join(list_backbones())}; default: resnet50 when its ImageNet "
        "file is here, else efficientnet_lite0 (whose weights every install has).",
    ),
    "train_ratio image_size",
    opt("classifier_max_epochs", "--max-epochs"),
    opt("classifier_batch_size", "--batch-size"),
    "seed per_class classes",
    opt("classifier_lr", "--lr"),
    "attention_epochs freeze_stages pretrained",
    CACHE_DIR,
    "progress",
)
def train_classifier_command(
    out: Annotated[Path, typer.Option(help="Checkpoint to write (.pt).")],
    *,
    overrides: SettingOverrides,
) -> None:
    """Train a scene classifier on the train part of a seeded stratified split."""
    from model.classifiers.evaluation import dataset_for, machine_description, test_report
    from model.classifiers.training import TrainConfig, train_classifier

    settings = get_settings(**overrides)
    config = TrainConfig.from_settings(settings)
    method, dataset_kind = config.method, settings.dataset
    images = dataset_for(dataset_kind, settings.data_root, config.per_class, config.classes)
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
        "dataset": dataset_kind,
        "classes": images.class_names,
        "image_size": trained.checkpoint.preprocessing.image_size,
        "epochs": config.epochs,
        "train_fraction": settings.train_ratio,
        "split_seeds": [config.seed],
        "n_train": len(trained.split.train),
        "train_seconds": trained.seconds,
        "test": report.to_dict(),
        "machine": machine_description(),
    }
    results_path = out.with_name(out.stem + ".results.json")
    results_path.write_text(json.dumps(results, indent=1))
    typer.echo(
        f"{method} ({ckpt.config['backbone']}, init {ckpt.init}) on {len(trained.split.train)} "
        f"{dataset_kind} images: test OA {report.overall_accuracy:.4f} on {report.n_test}; "
        f"checkpoint written to {out}, figures to {results_path}"
    )


@app.command("evaluate-classifier")
@setting_options(DATASET, DATA_ROOT, "repeats", CACHE_DIR, "progress")
def evaluate_classifier_command(
    checkpoint: Annotated[Path, typer.Option(help="Classifier checkpoint (.pt).")],
    out: Annotated[Path, typer.Option(help="Folder for results.json and confusion matrices.")],
    *,
    overrides: SettingOverrides,
) -> None:
    """OA, per-class accuracy and confusion matrix (JSON + PNG), mean +- std over splits."""
    from model.classifiers.evaluation import evaluate_classifier
    from model.classifiers.training import gradcam_cache

    settings = get_settings(**overrides)
    results = evaluate_classifier(
        checkpoint,
        settings.dataset,
        settings.data_root,
        out,
        repeats=settings.repeats,
        device=settings.device,
        progress=settings.progress,
        cache_dir=gradcam_cache(settings),
    )
    oa = results["overall_accuracy"]
    typer.echo(
        f"{results['method']} on {settings.dataset}: OA {oa['mean']:.4f} +- {oa['std']:.4f} over "
        f"{oa['n']} split(s) {results['split_seeds']}; results in {out / 'results.json'}"
    )
