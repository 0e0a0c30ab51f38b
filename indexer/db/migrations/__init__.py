"""Alembic's script directory (env.py, versions/), a package so that the wheel ships it."""
