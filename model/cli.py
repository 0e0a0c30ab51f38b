"""`rsir train`: train the retrieval embedder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from model.datasets import DATASET_KINDS
from rsir.settings import get_settings

app = typer.Typer()


@app.command()
def train(
    out: Annotated[Path, typer.Option(help="Checkpoint to write (.pt).")],
    dataset: Annotated[str, typer.Option(help=f"One of {', '.join(DATASET_KINDS)}.")] = "ucm",
    root: Annotated[Path | None, typer.Option(help="Data root (default: RSIR_DATA_ROOT).")] = None,
    backbone: Annotated[
        str | None,
        typer.Option(
            help="Any registered backbone (rsir weights list); default: resnet50 when its "
            "ImageNet file is here, else efficientnet_lite0."
        ),
    ] = None,
    pooling: Annotated[str, typer.Option(help="gem, spoc or mac.")] = "gem",
    attention: Annotated[bool, typer.Option(help="Dual attention on or off.")] = True,
    image_size: Annotated[
        int | None, typer.Option(help="Square input size; default: the backbone's native size.")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Tuples per step.")] = 8,
    max_epochs: Annotated[int, typer.Option(help="Contrastive (hard-negative) epochs.")] = 10,
    ce_epochs: Annotated[
        int, typer.Option(help="Classification warm-start epochs before the contrastive ones.")
    ] = 0,
    lr: Annotated[float, typer.Option()] = 1e-4,
    warmup_steps: Annotated[int, typer.Option(help="Linear learning-rate warm-up.")] = 50,
    min_scale: Annotated[
        float, typer.Option(help="Scale augmentation: crops of at least this area fraction.")
    ] = 0.5,
    margin: Annotated[float, typer.Option(help="Contrastive margin tau.")] = 0.7,
    negatives: Annotated[int, typer.Option(help="Hard negatives per query.")] = 2,
    seed: Annotated[int, typer.Option(help="Split and training seed.")] = 0,
    per_class: Annotated[int | None, typer.Option(help="Use N images per class.")] = None,
    pretrained: Annotated[
        bool, typer.Option(help="ImageNet initialisation (--no-pretrained: random init).")
    ] = True,
) -> None:
    """Train the embedder on the train split (80 %); resumes from its last epoch."""
    from model.train_embedder import TrainConfig, train_embedder

    settings = get_settings()
    weights = settings.imagenet_weights
    cfg = TrainConfig(
        dataset=dataset,
        root=str(root or settings.data_root),
        backbone=backbone,
        pooling=pooling,
        attention=attention,
        image_size=image_size,
        batch_size=batch_size,
        max_epochs=max_epochs,
        ce_epochs=ce_epochs,
        lr=lr,
        warmup_steps=warmup_steps,
        min_scale=min_scale,
        margin=margin,
        negatives=negatives,
        seed=seed,
        per_class=per_class,
        num_workers=settings.num_workers,
        device=settings.device,
        pretrained=pretrained,
        imagenet_weights=str(weights) if weights else None,
    )
    path = train_embedder(cfg, out)
    typer.echo(f"checkpoint written to {path}")


weights_app = typer.Typer(help="ImageNet weights of the backbones.")
app.add_typer(weights_app, name="weights")


@weights_app.command("list")
def weights_list() -> None:
    """Every backbone, its preprocessing and whether its ImageNet file is on this machine."""
    from model.backbones import get_backbone, imagenet_weights_file, list_backbones

    for name in list_backbones():
        spec = get_backbone(name)
        found = imagenet_weights_file(name)
        where = str(found) if found else f"missing (rsir weights fetch {name})"
        typer.echo(f"{name:<20} {spec.native_size:>4} px  mean {spec.mean}  {where}")


@weights_app.command("fetch")
def weights_fetch(
    backbone: Annotated[str, typer.Argument(help="e.g. resnet50")],
    url: Annotated[str | None, typer.Option(help="A mirror instead of torchvision's.")] = None,
    sha256: Annotated[
        str | None, typer.Option(help="Expected SHA-256 (default: torchvision's published one).")
    ] = None,
) -> None:
    """Download torchvision's ImageNet file into the torch cache, verifying its SHA-256."""
    from model.weights import WeightsFetchError, fetch_weights

    try:
        path = fetch_weights(backbone, url=url, sha256=sha256)
    except (WeightsFetchError, ValueError) as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(1) from None
    typer.echo(f"{backbone}: ImageNet weights verified and saved to {path}")
