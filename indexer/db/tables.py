"""Every table of the metadata DB (SQLAlchemy 2): images and scenes, index versions, segments
and tombstones, and the service's jobs.

The schema is made only by the Alembic migrations in `indexer/db/migrations/` (never
`create_all`), so that SQLite and PostgreSQL deployments evolve the same way.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, deferred, mapped_column
from sqlalchemy.types import TypeDecorator

# The largest id an INTEGER primary key holds on every supported DB (PostgreSQL's is 32-bit).
MAX_ROW_ID = 2**31 - 1


def utcnow() -> datetime:
    """Timezone-aware now, for created_at columns."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A datetime stored as UTC and read back timezone-aware, on SQLite (naive) and PostgreSQL.

    Lease expiry is compared inside SQL, so every stored value must be in the same zone; plain
    `DateTime(timezone=True)` on SQLite drops the zone and keeps the local wall time.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base of every table below: one metadata, one Alembic history."""


class ImageRow(Base):
    """One indexed image. `id` is its FAISS id; `index_version` the first index file holding it."""

    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("model_fingerprint", "source", "path", name="uq_image"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(1024), index=True)
    path: Mapped[str] = mapped_column(String(1024))
    content_hash: Mapped[str] = mapped_column(String(64), index=True)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    label: Mapped[str | None] = mapped_column(String(256), nullable=True, index=True)
    model_fingerprint: Mapped[str] = mapped_column(String(64), index=True)
    index_version: Mapped[int] = mapped_column(Integer, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Tiles of a geo-referenced scene (indexer/scenes.py); NULL for plain images.
    scene_id: Mapped[int | None] = mapped_column(ForeignKey("scenes.id"), nullable=True, index=True)
    win_col: Mapped[int | None] = mapped_column(Integer, nullable=True)
    win_row: Mapped[int | None] = mapped_column(Integer, nullable=True)
    win_width: Mapped[int | None] = mapped_column(Integer, nullable=True)
    win_height: Mapped[int | None] = mapped_column(Integer, nullable=True)
    crs: Mapped[str | None] = mapped_column(Text, nullable=True)
    footprint: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # WGS84
    min_lon: Mapped[float | None] = mapped_column(Float, nullable=True)
    min_lat: Mapped[float | None] = mapped_column(Float, nullable=True)
    max_lon: Mapped[float | None] = mapped_column(Float, nullable=True)
    max_lat: Mapped[float | None] = mapped_column(Float, nullable=True)


Index("ix_images_bbox", ImageRow.min_lon, ImageRow.max_lon, ImageRow.min_lat, ImageRow.max_lat)


class SceneRow(Base):
    """A geo-referenced scene whose tiles are indexed, with the band choice and stretch used.

    The stretch is kept so that a query cut from the same kind of data is shown to the model
    exactly as the indexed tiles were (indexer/scenes.py).
    """

    __tablename__ = "scenes"
    __table_args__ = (UniqueConstraint("source", "bands", name="uq_scene"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(1024), index=True)
    bands: Mapped[str] = mapped_column(String(64))  # "4,3,2"
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    band_count: Mapped[int] = mapped_column(Integer)
    dtype: Mapped[str] = mapped_column(String(16))
    crs: Mapped[str | None] = mapped_column(Text, nullable=True)
    transform: Mapped[list[float]] = mapped_column(JSON)  # GDAL-order affine a, b, c, d, e, f
    nodata: Mapped[float | None] = mapped_column(Float, nullable=True)
    stretch: Mapped[list[list[float]] | None] = mapped_column(JSON, nullable=True)
    footprint: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    min_lon: Mapped[float | None] = mapped_column(Float, nullable=True)
    min_lat: Mapped[float | None] = mapped_column(Float, nullable=True)
    max_lon: Mapped[float | None] = mapped_column(Float, nullable=True)
    max_lat: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class IndexVersionRow(Base):
    """A FAISS index file written to disk. Only the newest committed one is current.

    A version is committed in the same transaction that commits the rows it added or deletes
    the rows it removed, which is what keeps index and DB in agreement across crashes.
    """

    __tablename__ = "index_versions"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    filename: Mapped[str] = mapped_column(String(256))
    model_fingerprint: Mapped[str] = mapped_column(String(64))
    factory: Mapped[str] = mapped_column(String(256))
    ntotal: Mapped[int] = mapped_column(Integer)
    committed: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class IndexSegmentRow(Base):
    """An immutable segment file holding the vectors of versions first_version..last_version.

    It is live from `created_version` (the commit that wrote it) until `dropped_version` (the
    compaction that merged it away), so the segments of any committed version are known.
    """

    __tablename__ = "index_segments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    filename: Mapped[str] = mapped_column(String(256))
    first_version: Mapped[int] = mapped_column(Integer)
    last_version: Mapped[int] = mapped_column(Integer)
    ntotal: Mapped[int] = mapped_column(Integer)
    created_version: Mapped[int] = mapped_column(Integer, index=True)
    dropped_version: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class TombstoneRow(Base):
    """A removed image whose vector is still inside a segment; searches skip it."""

    __tablename__ = "index_tombstones"

    segment_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    image_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    version: Mapped[int] = mapped_column(Integer, index=True)


class JobStatus(StrEnum):
    """Where a job is: queued -> running -> done | failed (stored as its value)."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class JobRow(Base):
    """One background job. A worker owns a running job only while its lease is unexpired.

    status: queued -> running -> done | failed; a running job whose lease expired goes back to
    queued (attempts left) or to failed with the reason, so no job stays running forever.
    """

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True, default=JobStatus.QUEUED.value)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=2)
    worker_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    results: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Plots live in the DB, not on a disk the API may not share with the worker.
    artifact_png: Mapped[bytes | None] = deferred(mapped_column(LargeBinary, nullable=True))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
