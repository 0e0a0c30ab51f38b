"""The service's commands: `rsir serve`, `rsir worker`, `rsir db upgrade`.

Each flag overrides the setting of the same name (RSIR_* in the environment).
"""

from __future__ import annotations

import logging

import typer

from rsir_common.logs import configure_logging
from rsir_common.options import SettingOverrides, opt, setting_options
from rsir_common.settings import Settings, get_settings
from service.serving import run_server, run_worker

log = logging.getLogger(__name__)

app = typer.Typer(help="The HTTP service, its worker and its database.", add_completion=False)
db_app = typer.Typer(help="The metadata database.", no_args_is_help=True, add_completion=False)
app.add_typer(db_app, name="db")


def _configure_logging(settings: Settings) -> None:
    configure_logging(settings.log_level)


@app.command()
@setting_options(
    opt("host", help="Bind address."),
    opt("port", help="Port."),
    "index_dir checkpoint",
    opt("worker_url", help="A separate `rsir worker`; default: in this process."),
)
def serve(*, overrides: SettingOverrides) -> None:
    """Run the HTTP API (and, by default, the inference worker in the same process)."""
    settings = get_settings(**overrides)
    _configure_logging(settings)
    run_server(settings)


@app.command()
@setting_options(
    opt("worker_host", "--host", help="Bind address."),
    opt("worker_port", "--port", help="Port."),
    "index_dir checkpoint",
)
def worker(*, overrides: SettingOverrides) -> None:
    """Run the inference worker as its own process: queries from the API, jobs from the DB."""
    settings = get_settings(**overrides)
    _configure_logging(settings)
    run_worker(settings)


@db_app.command("upgrade")
@setting_options(opt("db_url", "--db-url", "--db"))
def db_upgrade(
    *,
    overrides: SettingOverrides,
    revision: str = typer.Option("head", help="Alembic revision to upgrade to."),
) -> None:
    """Create or migrate the metadata DB schema (Alembic `upgrade head`)."""
    from indexer.db import upgrade_db

    settings = get_settings(**overrides)
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
