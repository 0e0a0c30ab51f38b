"""The main job on the embedded default: train a small embedder on the real UCM images, index
them, evaluate by the split protocol, show a search, and (optionally) serve the index."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import typer

from model.train_embedder import TrainConfig
from rsir_common.settings import Settings

log = logging.getLogger(__name__)


def demo_train_config(
    settings: Settings, ce_epochs: int, metric_epochs: int, image_size: int, pretrained: bool
) -> TrainConfig:
    """The demo's recipe (bench/results/retrieval.md measured it): the default pretrained
    backbone with its first three stages frozen and cached, so that fine-tuning fits minutes
    of CPU; classification epochs, then contrastive hard-negative epochs."""
    return TrainConfig(
        dataset="ucm",
        root=str(settings.data_root),
        image_size=image_size,
        batch_size=16,
        ce_epochs=ce_epochs,
        max_epochs=metric_epochs,
        lr=1e-3,
        freeze_stages=3 if pretrained else 0,
        negatives=2,
        num_workers=settings.num_workers,
        device=settings.device,
        pretrained=pretrained,
        imagenet_weights=str(settings.imagenet_weights) if settings.imagenet_weights else None,
    )


def run_demo(
    settings: Settings,
    train_epochs: int,
    image_size: int,
    serve: bool,
    metric_epochs: int = 0,
    pretrained: bool = True,
) -> None:
    """Each step is skipped when its result is already there, so a re-run is quick."""
    from indexer.evaluate import format_results_table
    from indexer.evaluate_index import evaluate_index
    from indexer.options import EvaluateOptions, IndexOptions
    from indexer.pipeline import index_source
    from indexer.search import Searcher
    from model.datasets import DatasetNotFoundError, discover_dataset
    from model.imageio import read_image
    from model.train_embedder import train_embedder
    from rsir_common.progress import progress_bar

    started = time.monotonic()
    try:
        ucm = discover_dataset("ucm", settings.data_root)
    except DatasetNotFoundError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        typer.echo("Set RSIR_DATA_ROOT (or --data-root) to the folder that holds the data.")
        raise typer.Exit(2) from None
    typer.echo(f"[1/4] UCM: {len(ucm)} images in {len(ucm.class_names)} classes at {ucm.root}")

    work = settings.index_dir.parent
    checkpoint = settings.checkpoint
    if checkpoint is None:
        cfg = demo_train_config(settings, train_epochs, metric_epochs, image_size, pretrained)
        resolved = cfg.resolved()
        init = "ImageNet" if pretrained else "random init"
        checkpoint = (
            work
            / "demo"
            / (
                f"embedder-{resolved.backbone}-{resolved.image_size}px-"
                f"{train_epochs}+{metric_epochs}ep{'' if pretrained else '-random'}.pt"
            )
        )
        if not checkpoint.is_file():
            typer.echo(
                f"[2/4] fine-tuning {resolved.backbone} ({init}) + dual attention + GeM at "
                f"{resolved.image_size} px on the 80 % train split: {train_epochs} classification "
                f"epochs, {metric_epochs} contrastive hard-negative epochs, first "
                f"{resolved.freeze_stages} stages frozen"
            )
            train_embedder(cfg, checkpoint)
        else:
            typer.echo(f"[2/4] using the trained checkpoint {checkpoint}")
    else:
        typer.echo(f"[2/4] using the checkpoint {checkpoint}")

    typer.echo(f"[3/4] indexing {ucm.root} into {settings.index_dir}")
    # The demo's own index: Flat, unwhitened, embedded here, in the engine that made it.
    options = IndexOptions.from_settings(
        settings, index_factory="Flat", whitening=None, vector_engine=None, ray_address=None
    )
    with progress_bar("indexing") as progress:
        summary = index_source(ucm.root, checkpoint, options, progress=progress)
    typer.echo(
        f"      added {summary.added}, already indexed {summary.skipped_existing}, "
        f"corrupt {summary.corrupt}; index holds {summary.index_total}"
    )

    out = work / "demo" / "evaluation"
    typer.echo(
        f"[4/4] evaluating the index as built (queries: 20 % test split, gallery: the other "
        f"indexed images) -> {out}"
    )
    # The demo's evaluation: UCM by the split protocol, the checkpoint's split, every image.
    evaluation = EvaluateOptions.from_settings(
        settings, dataset="ucm", protocol="split", seed=None, per_class=None
    )
    searcher = Searcher.from_settings(settings, checkpoint)
    with progress_bar("embedding the queries") as progress:
        results = evaluate_index(searcher, out, evaluation, progress=progress)
    typer.echo(format_results_table(results))

    query_path = (
        ucm.paths[ucm.labels.index(ucm.class_names.index("airplane"))]
        if ("airplane" in ucm.class_names)
        else ucm.paths[0]
    )
    hits = searcher.search_images([read_image(Path(query_path), settings.max_pixels)], k=5)[0]
    typer.echo(f"search for {query_path.name}:")
    for rank, hit in enumerate(hits, 1):
        typer.echo(f"  {rank}. {hit.score:.3f} {hit.label or '-':<18} {hit.path}")
    typer.echo(
        f"mAP {results['map']:.4f} (init {results['init']}) in {time.monotonic() - started:.0f} s"
    )
    if serve:
        _serve(settings, checkpoint)


def _serve(settings: Settings, checkpoint: Path) -> None:
    """Hand over to the service when it is installed."""
    try:
        from service.serving import run_server
    except ImportError:
        log.info("the service is not available in this build; not serving")
        return
    run_server(settings.model_copy(update={"checkpoint": checkpoint}))
