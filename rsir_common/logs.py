"""Logging for the command line: one format, level from settings."""

from __future__ import annotations

import logging


def configure_logging(level: str = "INFO") -> None:
    """Log to stderr with timestamps; quiet noisy libraries."""
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    for noisy in ("PIL", "matplotlib", "alembic", "httpx", "faiss"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
