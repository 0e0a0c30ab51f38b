"""The `rsir` command: gathers the commands that each package owns."""

from __future__ import annotations

import typer

from indexer.cli import app as indexer_app
from indexer.whiten_cli import app as whiten_app
from model.classifier_cli import app as classifier_app
from model.cli import app as model_app
from model.export_cli import app as export_app
from rsir_common.logs import configure_logging
from rsir_common.options import SettingOverrides, opt, setting_options
from rsir_common.settings import get_settings
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
@setting_options(
    opt("demo_train_epochs", "--train-epochs"),
    opt("demo_metric_epochs", "--metric-epochs"),
    opt("demo_image_size", "--image-size"),
    "pretrained",
    opt("demo_serve", "--serve/--no-serve"),
    opt("data_root", "--data-root", "--root"),
)
def demo(*, overrides: SettingOverrides) -> None:
    """The main job: fine-tune the pretrained embedder on UCM, index it, evaluate, search."""
    from rsir.demo import run_demo

    settings = get_settings(**overrides)
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
