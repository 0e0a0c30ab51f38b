"""The schema's one history: Alembic migrations shipped inside this package, and the policy of
who runs them.

The migrations (`migrations/env.py`, `migrations/versions/`) are package data of the wheel, so
an installed copy (`pip install .`, the Docker images) finds them beside this module, never in a
source checkout.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from indexer.db.engine import is_embedded, make_engine

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def _alembic_config(url: str | None = None) -> Config:
    """Alembic's config with the script location of this package (and the URL, if given)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade_db(url: str, revision: str = "head") -> None:
    """Run Alembic migrations up to `revision` (creates the schema on an empty DB)."""
    from alembic import command

    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(_alembic_config(url), revision)


class SchemaOutOfDateError(RuntimeError):
    """A server DB (PostgreSQL) whose schema is not at the code's migration head."""


def schema_problem(engine: Engine) -> str | None:
    """None when the DB is at the newest migration, else what to run."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    heads = set(ScriptDirectory.from_config(_alembic_config()).get_heads())
    with engine.connect() as connection:
        current = set(MigrationContext.configure(connection).get_current_heads())
    if current != heads:
        return (
            f"metadata DB schema is at {sorted(current) or 'nothing'}, code needs {sorted(heads)}:"
            " run `rsir db upgrade`"
        )
    return None


def prepare_schema(url: str) -> None:
    """The one migration policy: SQLite (embedded default) is upgraded here; a server DB is
    only checked, since its migrations run in one place (`rsir db upgrade`, the API image's
    entry point) and never concurrently from every indexing run."""
    if is_embedded(url):
        upgrade_db(url)
        return
    engine = make_engine(url)
    try:
        problem = schema_problem(engine)
    finally:
        engine.dispose()
    if problem:
        raise SchemaOutOfDateError(problem)
