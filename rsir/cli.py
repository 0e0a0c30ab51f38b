"""The `rsir` command: gathers the commands that each package owns."""

from __future__ import annotations

from pathlib import Path

import typer

from indexer.cli import app as indexer_app
from indexer.whiten_cli import app as whiten_app
from model.classifier_cli import app as classifier_app
from model.cli import app as model_app
from model.export_cli import app as export_app
from rsir_common.logs import configure_logging
from rsir_common.settings import get_settings, option_help
from service.cli import app as service_app

app = typer.Typer(
    help="Content-based remote-sensing image retrieval: train, index, search, evaluate, serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for sub in (model_app, indexer_app, whiten_app, classifier_app, service_app, export_app):
    app.registered_commands.extend(sub.registered_commands)
    app.registered_groups.extend(sub.registered_groups)


@app.callback()
def _root() -> None:
    configure_logging(get_settings().log_level)


@app.command()
def demo(
    demo_train_epochs: int | None = typer.Option(
        None, "--train-epochs", help=option_help("demo_train_epochs")
    ),
    demo_metric_epochs: int | None = typer.Option(
        None, "--metric-epochs", help=option_help("demo_metric_epochs")
    ),
    demo_image_size: int | None = typer.Option(
        None, "--image-size", help=option_help("demo_image_size")
    ),
    pretrained: bool | None = typer.Option(
        None, "--pretrained/--no-pretrained", help=option_help("pretrained")
    ),
    demo_serve: bool | None = typer.Option(
        None, "--serve/--no-serve", help=option_help("demo_serve")
    ),
    data_root: Path | None = typer.Option(
        None, "--data-root", "--root", help=option_help("data_root")
    ),
) -> None:
    """The main job: fine-tune the pretrained embedder on UCM, index it, evaluate, search."""
    from rsir.demo import run_demo

    settings = get_settings(
        demo_train_epochs=demo_train_epochs,
        demo_metric_epochs=demo_metric_epochs,
        demo_image_size=demo_image_size,
        pretrained=pretrained,
        demo_serve=demo_serve,
        data_root=data_root,
    )
    run_demo(
        settings,
        train_epochs=settings.demo_train_epochs,
        image_size=settings.demo_image_size,
        serve=settings.demo_serve,
        metric_epochs=settings.demo_metric_epochs,
        pretrained=settings.pretrained,
    )


def main() -> None:
    """Console-script entry point."""
    app()
