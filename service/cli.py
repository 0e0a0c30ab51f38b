"""The service's commands: `rsir serve`, `rsir worker`, `rsir db upgrade`.

Each flag overrides the setting of the same name (RSIR_* in the environment).
"""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from rsir_common.logs import configure_logging
from rsir_common.settings import Settings, get_settings, option_help
from service.serving import run_server, run_worker

log = logging.getLogger(__name__)

app = typer.Typer(help="The HTTP service, its worker and its database.", add_completion=False)
db_app = typer.Typer(help="The metadata database.", no_args_is_help=True, add_completion=False)
app.add_typer(db_app, name="db")


def _configure_logging(settings: Settings) -> None:
    configure_logging(settings.log_level)


@app.command()
def serve(
    host: str | None = typer.Option(None, help=option_help("host", "Bind address.")),
    port: int | None = typer.Option(None, help=option_help("port", "Port.")),
    index_dir: Path | None = typer.Option(None, help=option_help("index_dir")),
    checkpoint: Path | None = typer.Option(None, help=option_help("checkpoint")),
    worker_url: str | None = typer.Option(
        None,
        help=option_help("worker_url", "A separate `rsir worker`; default: in this process."),
    ),
) -> None:
    """Run the HTTP API (and, by default, the inference worker in the same process)."""
    settings = get_settings(
        host=host, port=port, index_dir=index_dir, checkpoint=checkpoint, worker_url=worker_url
    )
    _configure_logging(settings)
    run_server(settings)


@app.command()
def worker(
    worker_host: str | None = typer.Option(
        None, "--host", help=option_help("worker_host", "Bind address.")
    ),
    worker_port: int | None = typer.Option(
        None, "--port", help=option_help("worker_port", "Port.")
    ),
    index_dir: Path | None = typer.Option(None, help=option_help("index_dir")),
    checkpoint: Path | None = typer.Option(None, help=option_help("checkpoint")),
) -> None:
    """Run the inference worker as its own process: queries from the API, jobs from the DB."""
    settings = get_settings(
        worker_host=worker_host, worker_port=worker_port, index_dir=index_dir, checkpoint=checkpoint
    )
    _configure_logging(settings)
    run_worker(settings)


@db_app.command("upgrade")
def db_upgrade(
    db_url: str | None = typer.Option(None, "--db-url", "--db", help=option_help("db_url")),
    revision: str = typer.Option("head", help="Alembic revision to upgrade to."),
) -> None:
    """Create or migrate the metadata DB schema (Alembic `upgrade head`)."""
    from indexer.db import upgrade_db

    settings = get_settings(db_url=db_url)
    _configure_logging(settings)
    url = settings.resolved_db_url()
    upgrade_db(url, revision)
    typer.echo(f"metadata DB at {revision}: {_redact(url)}")


def _redact(url: str) -> str:
    """The URL without its password."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


if __name__ == "__main__":
    app()
