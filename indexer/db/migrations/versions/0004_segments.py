"""Index segments and tombstones: commits write only their new vectors; removals are tombstones.

An index written before this revision is one file per version; the newest committed file
becomes segment 1, holding every version up to its own.

Revision ID: 0004_segments
Revises: 0003_geo
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_segments"
down_revision = "0003_geo"
branch_labels = None
depends_on = None


def upgrade() -> None:
    segments = op.create_table(
        "index_segments",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("filename", sa.String(256), nullable=False),
        sa.Column("first_version", sa.Integer(), nullable=False),
        sa.Column("last_version", sa.Integer(), nullable=False),
        sa.Column("ntotal", sa.Integer(), nullable=False),
        sa.Column("created_version", sa.Integer(), nullable=False),
        sa.Column("dropped_version", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_index_segments_created_version", "index_segments", ["created_version"])
    op.create_index("ix_index_segments_dropped_version", "index_segments", ["dropped_version"])
    op.create_table(
        "index_tombstones",
        sa.Column("segment_id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("image_id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("version", sa.Integer(), nullable=False),
    )
    op.create_index("ix_index_tombstones_version", "index_tombstones", ["version"])

    versions = sa.table(
        "index_versions",
        sa.column("version", sa.Integer()),
        sa.column("filename", sa.String()),
        sa.column("ntotal", sa.Integer()),
        sa.column("committed", sa.Boolean()),
        sa.column("created_at", sa.DateTime(timezone=True)),
    )
    legacy = (
        op.get_bind()
        .execute(
            sa.select(versions)
            .where(versions.c.committed.is_(True))
            .order_by(versions.c.version.desc())
            .limit(1)
        )
        .first()
    )
    if legacy is not None and legacy.ntotal > 0:
        op.bulk_insert(
            segments,
            [
                {
                    "id": 1,
                    "filename": legacy.filename,
                    "first_version": 0,
                    "last_version": legacy.version,
                    "ntotal": legacy.ntotal,
                    "created_version": legacy.version,
                    "dropped_version": None,
                    "created_at": legacy.created_at,
                }
            ],
        )


def downgrade() -> None:
    op.drop_index("ix_index_tombstones_version", table_name="index_tombstones")
    op.drop_table("index_tombstones")
    op.drop_index("ix_index_segments_dropped_version", table_name="index_segments")
    op.drop_index("ix_index_segments_created_version", table_name="index_segments")
    op.drop_table("index_segments")
