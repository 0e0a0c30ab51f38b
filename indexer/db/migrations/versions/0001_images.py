"""Images and index versions: the retrieval core's metadata.

Revision ID: 0001_images
Revises:
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0001_images"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "images",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("source", sa.String(1024), nullable=False),
        sa.Column("path", sa.String(1024), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(256), nullable=True),
        sa.Column("model_fingerprint", sa.String(64), nullable=False),
        sa.Column("index_version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("model_fingerprint", "source", "path", name="uq_image"),
    )
    op.create_index("ix_images_source", "images", ["source"])
    op.create_index("ix_images_content_hash", "images", ["content_hash"])
    op.create_index("ix_images_label", "images", ["label"])
    op.create_index("ix_images_model_fingerprint", "images", ["model_fingerprint"])
    op.create_index("ix_images_index_version", "images", ["index_version"])
    op.create_table(
        "index_versions",
        sa.Column("version", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("filename", sa.String(256), nullable=False),
        sa.Column("model_fingerprint", sa.String(64), nullable=False),
        sa.Column("factory", sa.String(256), nullable=False),
        sa.Column("ntotal", sa.Integer(), nullable=False),
        sa.Column("committed", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("index_versions")
    op.drop_table("images")
