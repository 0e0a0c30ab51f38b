"""The metadata DB: timestamps come back timezone-aware, and one migration policy."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import inspect

from indexer.db import (
    ImageRow,
    IndexVersionRow,
    SchemaOutOfDateError,
    make_engine,
    make_sessionmaker,
    upgrade_db,
)
from indexer.options import IndexOptions
from indexer.pipeline import index_source
from tests.conftest import ucm_files


def test_created_at_keeps_its_time_zone(db_url: str) -> None:
    upgrade_db(db_url)
    engine = make_engine(db_url)
    made = datetime(2026, 5, 4, 12, 30, tzinfo=timezone(timedelta(hours=2)))
    with make_sessionmaker(engine).begin() as session:
        session.add(
            ImageRow(
                source="s", path="p.jpg", content_hash="0" * 64, width=1, height=1,
                label=None, model_fingerprint="f", index_version=1, created_at=made,
            )
        )  # fmt: skip
        session.add(
            IndexVersionRow(
                version=1, filename="index-v1.faiss", model_fingerprint="f", factory="Flat",
                ntotal=1, committed=True,
            )
        )  # fmt: skip
    with make_sessionmaker(engine)() as session:
        image = session.query(ImageRow).one()
        version = session.query(IndexVersionRow).one()
    engine.dispose()
    assert image.created_at.tzinfo is not None and image.created_at == made
    assert image.created_at.utcoffset() == timedelta(0)  # stored and read back as UTC
    assert version.created_at.tzinfo is not None
    assert abs(version.created_at - datetime.now(UTC)) < timedelta(minutes=5)


def test_only_the_embedded_sqlite_db_is_migrated_by_an_index_run(
    db_url: str, tmp_path: Path, other_checkpoint: Path
) -> None:
    """One migration policy: SQLite (embedded) is upgraded on the spot; a PostgreSQL DB that
    is behind is refused with the command to run, and left as it was."""
    folder = tmp_path / "images" / "beach"
    folder.mkdir(parents=True)
    for src in ucm_files("beach", 2):
        shutil.copy(src, folder / src.name)
    options = IndexOptions(index_dir=tmp_path / "index", db_url=db_url, num_workers=0, device="cpu")
    if db_url.startswith("postgresql"):
        with pytest.raises(SchemaOutOfDateError, match="rsir db upgrade"):
            index_source(tmp_path / "images", other_checkpoint, options)
        engine = make_engine(db_url)
        assert not inspect(engine).get_table_names()  # nothing was created
        engine.dispose()
        upgrade_db(db_url)
    summary = index_source(tmp_path / "images", other_checkpoint, options)
    assert summary.added == 2
