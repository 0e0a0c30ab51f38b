"""Fixtures the indexer tests share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from indexer.db import make_engine, upgrade_db


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """An engine of `db_url` (SQLite or PostgreSQL) with the schema at head."""
    upgrade_db(db_url)
    engine = make_engine(db_url)
    yield engine
    engine.dispose()
