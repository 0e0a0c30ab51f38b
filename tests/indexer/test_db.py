"""The metadata DB's own types: timestamps come back timezone-aware on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from indexer.db import ImageRow, IndexVersionRow, make_engine, make_sessionmaker, upgrade_db


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
