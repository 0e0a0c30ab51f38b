"""The metadata DB, one package: every table (`tables.py`: images, scenes, index versions,
segments, tombstones, jobs), the engine (`engine.py`), and the Alembic migrations with the
policy of who runs them (`migrate.py`, `migrations/`, shipped as package data).

It sits in `indexer` because the indexer writes most of it and may not import the service; the
service keeps its job logic (service/jobs.py) over the `jobs` table defined here.
"""

from __future__ import annotations

from indexer.db.engine import is_embedded, make_engine, make_sessionmaker
from indexer.db.migrate import (
    MIGRATIONS_DIR,
    SchemaOutOfDateError,
    prepare_schema,
    schema_problem,
    upgrade_db,
)
from indexer.db.tables import (
    MAX_ROW_ID,
    Base,
    ImageRow,
    IndexSegmentRow,
    IndexVersionRow,
    JobRow,
    JobStatus,
    SceneRow,
    TombstoneRow,
    UTCDateTime,
    utcnow,
)

__all__ = [
    "MAX_ROW_ID",
    "MIGRATIONS_DIR",
    "Base",
    "ImageRow",
    "IndexSegmentRow",
    "IndexVersionRow",
    "JobRow",
    "JobStatus",
    "SceneRow",
    "SchemaOutOfDateError",
    "TombstoneRow",
    "UTCDateTime",
    "is_embedded",
    "make_engine",
    "make_sessionmaker",
    "prepare_schema",
    "schema_problem",
    "upgrade_db",
    "utcnow",
]
