"""Alembic environment: the URL comes from the caller's config or RSIR settings, never a file.

Loaded by Alembic from the installed package (indexer.db.migrate.MIGRATIONS_DIR); every table
is in indexer.db.tables, so its metadata is complete without importing anything else.
"""

from __future__ import annotations

from alembic import context

from indexer.db.engine import make_engine
from indexer.db.tables import Base
from rsir_common.settings import Settings

target_metadata = Base.metadata


def _url() -> str:
    url = context.config.get_main_option("sqlalchemy.url")
    return url or Settings().resolved_db_url()


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    # Disposed at the end, so no pooled connection stays open. (Swapping in a NullPool would
    # skip the dialect's first-connect set-up, which batch migrations on SQLite reflect with.)
    engine = make_engine(_url())
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
