"""Alembic environment: the URL comes from the caller's config or RSIR settings, never a file."""

from __future__ import annotations

import contextlib

from alembic import context

from indexer.db import Base, make_engine
from rsir_common.settings import Settings

# Import every module that defines tables so that their metadata is complete.
with contextlib.suppress(ImportError):
    import service.models  # noqa: F401

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
