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
    backbone: Annotated[str, typer.Option(help="resnet50 (paper) or resnet18.")] = "resnet50",
    pooling: Annotated[str, typer.Option(help="gem, spoc or mac.")] = "gem",
    attention: Annotated[bool, typer.Option(help="Dual attention on or off.")] = True,
    image_size: Annotated[int, typer.Option(help="Square input size in pixels.")] = 224,
    batch_size: Annotated[int, typer.Option(help="Tuples per step.")] = 8,
    max_epochs: Annotated[int, typer.Option()] = 10,
    lr: Annotated[float, typer.Option()] = 1e-4,
    margin: Annotated[float, typer.Option(help="Contrastive margin tau.")] = 0.7,
    negatives: Annotated[int, typer.Option(help="Hard negatives per query.")] = 2,
    seed: Annotated[int, typer.Option(help="Split and training seed.")] = 0,
    per_class: Annotated[int | None, typer.Option(help="Use N images per class.")] = None,
    pretrained: Annotated[bool, typer.Option(help="ImageNet weights if on disk.")] = True,
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
        lr=lr,
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
