"""A real writer process for the crash tests: adds vectors through IndexStore, commit by commit.

Usage: python segment_writer.py INDEX_DIR DB_URL TOTAL COMMIT DIM [--no-compact]
Vector i is a fixed function of i (seeded), and entries already in the DB are skipped, so a
killed run re-run converges to the same index.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from sqlalchemy import select

from indexer.db import ImageRow, make_engine, make_sessionmaker, upgrade_db
from indexer.store import IndexStore

SOURCE = "synthetic"


def vector(i: int, dim: int) -> np.ndarray:
    """The descriptor of entry i: a seeded random unit vector."""
    v = np.random.default_rng(i).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def main(argv: list[str]) -> None:
    index_dir, url = Path(argv[0]), argv[1]
    total, commit, dim = int(argv[2]), int(argv[3]), int(argv[4])
    upgrade_db(url)
    engine = make_engine(url)
    with IndexStore.open(index_dir, engine, "synthetic-model", dim, "Flat", writable=True) as store:
        store.auto_compact = "--no-compact" not in argv
        with make_sessionmaker(engine)() as session:
            known = set(session.scalars(select(ImageRow.path)))
        todo = [i for i in range(total) if f"e{i}" not in known]
        for start in range(0, len(todo), commit):
            chunk = todo[start : start + commit]
            rows = [
                ImageRow(source=SOURCE, path=f"e{i}", content_hash="-", width=1, height=1)
                for i in chunk
            ]
            store.add(rows, np.stack([vector(i, dim) for i in chunk]))
    engine.dispose()


if __name__ == "__main__":
    main(sys.argv[1:])
