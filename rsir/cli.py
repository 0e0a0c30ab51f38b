"""The `rsir` command: gathers the commands that each package owns."""

from __future__ import annotations

import typer

from indexer.cli import app as indexer_app
from model.classifier_cli import app as classifier_app
from model.cli import app as model_app
from model.export_cli import app as export_app
from rsir.logs import configure_logging
from rsir.settings import get_settings
from service.cli import app as service_app

app = typer.Typer(
    help="Content-based remote-sensing image retrieval: train, index, search, evaluate, serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for sub in (model_app, indexer_app, classifier_app, service_app, export_app):
    app.registered_commands.extend(sub.registered_commands)
    app.registered_groups.extend(sub.registered_groups)


@app.callback()
def _root() -> None:
    configure_logging(get_settings().log_level)


@app.command()
def demo(
    train_epochs: int = typer.Option(4, help="Classification (warm-start) epochs."),
    metric_epochs: int = typer.Option(0, help="Contrastive hard-negative epochs after them."),
    image_size: int = typer.Option(192, help="Input size of the demo embedder."),
    pretrained: bool = typer.Option(
        True, help="ImageNet initialisation (--no-pretrained: random init, near chance)."
    ),
    serve: bool = typer.Option(True, help="End with the service running."),
) -> None:
    """The main job: fine-tune the pretrained embedder on UCM, index it, evaluate, search."""
    from rsir.demo import run_demo

    run_demo(
        get_settings(),
        train_epochs=train_epochs,
        image_size=image_size,
        serve=serve,
        metric_epochs=metric_epochs,
        pretrained=pretrained,
    )


def main() -> None:
    """Console-script entry point."""
    app()
