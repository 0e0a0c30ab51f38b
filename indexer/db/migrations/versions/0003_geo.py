"""Scenes and geo-referenced tiles: each tile's scene, pixel window, CRS and WGS84 footprint.

Revision ID: 0003_geo
Revises: 0002_jobs
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_geo"
down_revision = "0002_jobs"
branch_labels = None
depends_on = None

BBOX = ("min_lon", "min_lat", "max_lon", "max_lat")


def upgrade() -> None:
    op.create_table(
        "scenes",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("source", sa.String(1024), nullable=False),
        sa.Column("bands", sa.String(64), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("band_count", sa.Integer(), nullable=False),
        sa.Column("dtype", sa.String(16), nullable=False),
        sa.Column("crs", sa.Text(), nullable=True),
        sa.Column("transform", sa.JSON(), nullable=False),
        sa.Column("nodata", sa.Float(), nullable=True),
        sa.Column("stretch", sa.JSON(), nullable=True),
        sa.Column("footprint", sa.JSON(), nullable=True),
        *(sa.Column(name, sa.Float(), nullable=True) for name in BBOX),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("source", "bands", name="uq_scene"),
    )
    op.create_index("ix_scenes_source", "scenes", ["source"])
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("scene_id", sa.Integer(), nullable=True))
        for name in ("win_col", "win_row", "win_width", "win_height"):
            batch.add_column(sa.Column(name, sa.Integer(), nullable=True))
        batch.add_column(sa.Column("crs", sa.Text(), nullable=True))
        batch.add_column(sa.Column("footprint", sa.JSON(), nullable=True))
        for name in BBOX:
            batch.add_column(sa.Column(name, sa.Float(), nullable=True))
        batch.create_foreign_key("fk_images_scene_id", "scenes", ["scene_id"], ["id"])
        batch.create_index("ix_images_scene_id", ["scene_id"])
        batch.create_index("ix_images_bbox", ["min_lon", "max_lon", "min_lat", "max_lat"])


def downgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.drop_index("ix_images_bbox")
        batch.drop_index("ix_images_scene_id")
        batch.drop_constraint("fk_images_scene_id", type_="foreignkey")
        for name in ("scene_id", "win_col", "win_row", "win_width", "win_height", "crs",
                     "footprint", *BBOX):
            batch.drop_column(name)
    op.drop_index("ix_scenes_source", table_name="scenes")
    op.drop_table("scenes")
