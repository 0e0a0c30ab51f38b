"""Removing images from index and DB together: the one path `rsir remove` and the service's
`DELETE /images/{id}` share, so that both leave the same rows, versions and tombstones.

The store does the removal itself (indexer/store.py: one transaction deletes the rows, records
the tombstones and commits the version, so a crash leaves index and DB agreeing; Milvus: the DB
commits first, then the vectors go). What this module adds is what both callers need around
it: the writer lock taken for the shortest time, the model check, and errors that say which
of "unknown image", "another model", "another writer" happened.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, select

from indexer.db import ImageRow, make_sessionmaker
from indexer.engines import open_index
from indexer.sources import canonical_source
from indexer.store import SQL_CHUNK, ModelMismatchError


class UnknownImageError(LookupError):
    """An id asked to be removed is not in the DB (the service answers 404)."""


class IndexBusyError(RuntimeError):
    """The index cannot be opened for writing now (an index run holds it); retry later."""


@dataclass(frozen=True)
class Removal:
    """What a removal did: how many images went, and the index's size after it."""

    removed: int
    ntotal: int


def source_image_ids(engine: Engine, source: str) -> list[int]:
    """The ids of every image of `source`, as given or in its canonical (recorded) form."""
    with make_sessionmaker(engine)() as session:
        return list(
            session.scalars(
                select(ImageRow.id).where(ImageRow.source.in_([source, canonical_source(source)]))
            )
        )


def check_known(engine: Engine, image_ids: Sequence[int]) -> None:
    """Raise `UnknownImageError` naming the first id of `image_ids` that the DB does not hold."""
    wanted = list(dict.fromkeys(int(i) for i in image_ids))
    found: set[int] = set()
    with make_sessionmaker(engine)() as session:
        for start in range(0, len(wanted), SQL_CHUNK):
            chunk = wanted[start : start + SQL_CHUNK]
            found.update(session.scalars(select(ImageRow.id).where(ImageRow.id.in_(chunk))))
    for image_id in wanted:
        if image_id not in found:
            raise UnknownImageError(f"no image with id {image_id}")


def remove_images(
    index_dir: Path,
    engine: Engine,
    image_ids: Sequence[int],
    *,
    fingerprint: str | None = None,
    require_known: bool = False,
    vector_engine: str | None = None,
    milvus_uri: str | None = None,
    milvus_collection: str = "rsir",
) -> Removal:
    """Delete images from index and DB as one committed version.

    `fingerprint`: refuse (ModelMismatchError) an index of another model than the caller
    serves. `require_known`: every id must be in the DB (UnknownImageError, nothing removed);
    otherwise unknown ids are skipped and not counted. The engine options are `open_index`'s;
    an index in Milvus is found from the DB without them. Raises IndexBusyError while another
    process writes the index, FileNotFoundError when there is no index.
    """
    if require_known:
        check_known(engine, image_ids)
    try:
        writer = open_index(
            Path(index_dir),
            engine,
            fingerprint=fingerprint,
            writable=True,
            vector_engine=vector_engine,
            milvus_uri=milvus_uri,
            milvus_collection=milvus_collection,
        )
    except ModelMismatchError:
        raise
    except RuntimeError as exc:  # the writer lock: an index run is in progress
        raise IndexBusyError(str(exc)) from None
    with writer:
        removed = writer.remove(list(image_ids))
        return Removal(removed, writer.ntotal)
