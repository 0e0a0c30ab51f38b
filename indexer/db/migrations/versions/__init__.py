"""The revisions, oldest first by their numbers; Alembic reads them by path, never imports them."""
