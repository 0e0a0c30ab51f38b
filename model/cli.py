"""`rsir train`: train the retrieval embedder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from model.datasets import DATASET_KINDS
from rsir_common.options import DATA_ROOT, SettingOverrides, opt, setting_options
from rsir_common.settings import get_settings

app = typer.Typer()


@app.command()
@setting_options(
    opt("dataset", help=f"One of {', '.join(DATASET_KINDS)}."),
    DATA_ROOT,
    "backbone pooling attention image_size",
    opt("train_batch_size", "--batch-size"),
    "max_epochs ce_epochs lr warmup_steps min_scale margin negatives seed per_class pretrained",
)
def train(
    out: Annotated[Path, typer.Option(help="Checkpoint to write (.pt).")],
    *,
    overrides: SettingOverrides,
) -> None:
    """Train the embedder on the train split (80 %); resumes from its last epoch."""
    from model.train_embedder import TrainConfig, train_embedder

    cfg = TrainConfig.from_settings(get_settings(**overrides))
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
