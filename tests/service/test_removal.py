"""`rsir remove` and `DELETE /images/{id}` are one removal (indexer/removal.py): both go through
`remove_images`, and the same removals of the same index leave the same rows, versions,
segments, tombstones and index files, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

import indexer.removal
import service.search_engine
from indexer.db import (
    ImageRow,
    IndexSegmentRow,
    IndexVersionRow,
    TombstoneRow,
    make_engine,
    make_sessionmaker,
    upgrade_db,
)
from indexer.options import IndexOptions
from indexer.pipeline import index_source
from indexer.segments import index_files
from indexer.store import IndexStore
from rsir.cli import app

if TYPE_CHECKING:
    from conftest import AppFactory, World

pytestmark = pytest.mark.anyio


def _build(world: World, db_url: str, index_dir: Path) -> list[list[int]]:
    """The world's 24 images indexed into `db_url` in commits of 8 (three segments); the ids
    of each commit."""
    upgrade_db(db_url)
    options = IndexOptions(
        index_dir=index_dir, db_url=db_url, batch_size=8, num_workers=0, commit_every=8,
        device="cpu",
    )  # fmt: skip
    summary = index_source(world.collection, world.checkpoint, options)
    assert summary.added == len(world.classes) * world.per_class
    engine = make_engine(db_url)
    with make_sessionmaker(engine)() as session:
        found = session.execute(select(ImageRow.index_version, ImageRow.id).order_by(ImageRow.id))
        commits: dict[int, list[int]] = {}
        for version, image_id in found:
            commits.setdefault(version, []).append(image_id)
    engine.dispose()
    return [commits[v] for v in sorted(commits)]


# What a removal may change in the DB (every column but creation times).
COLUMNS = {
    "images": (ImageRow.id, ImageRow.source, ImageRow.path, ImageRow.index_version),
    "versions": (
        IndexVersionRow.version, IndexVersionRow.filename, IndexVersionRow.model_fingerprint,
        IndexVersionRow.factory, IndexVersionRow.ntotal, IndexVersionRow.committed,
    ),
    "segments": (
        IndexSegmentRow.id, IndexSegmentRow.filename, IndexSegmentRow.first_version,
        IndexSegmentRow.last_version, IndexSegmentRow.ntotal, IndexSegmentRow.created_version,
        IndexSegmentRow.dropped_version,
    ),
    "tombstones": (TombstoneRow.segment_id, TombstoneRow.image_id, TombstoneRow.version),
}  # fmt: skip


def _state(db_url: str, index_dir: Path) -> dict[str, Any]:
    """The DB's rows, the ids a fresh reader of the index holds, and the index's files."""
    engine = make_engine(db_url)
    try:
        with make_sessionmaker(engine)() as session:
            state: dict[str, Any] = {
                name: [tuple(row) for row in session.execute(select(*cols).order_by(*cols))]
                for name, cols in COLUMNS.items()
            }
        with IndexStore.open(index_dir, engine) as reader:
            state["index ids"] = sorted(reader.ids().tolist())
            state["ntotal"] = reader.ntotal
        state["files"] = sorted(p.name for p in index_files(index_dir))
    finally:
        engine.dispose()
    return state


async def test_cli_and_http_removals_go_through_remove_images_and_agree(
    world: World,
    db_url: str,
    second_db_url: str,
    tmp_path: Path,
    running_app: AppFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cli_dir, http_dir = tmp_path / "cli-index", tmp_path / "http-index"
    commits = _build(world, db_url, cli_dir)
    assert _build(world, second_db_url, http_dir) == commits and len(commits) == 3
    assert _state(db_url, cli_dir) == _state(second_db_url, http_dir)
    # One image of the second segment, two of the first: 2 of 8 removed there purges it
    # (compaction after a removal), so both paths also merge alike.
    gone = [commits[0][0], commits[1][3], commits[0][5]]

    calls: list[str] = []
    real = indexer.removal.remove_images

    def spy(index_dir: Path, *args: Any, **kwargs: Any) -> indexer.removal.Removal:
        calls.append(Path(index_dir).name)
        return real(index_dir, *args, **kwargs)

    monkeypatch.setattr(indexer.removal, "remove_images", spy)  # `rsir remove` imports it late
    monkeypatch.setattr(service.search_engine, "remove_images", spy)

    runner = CliRunner()
    for image_id in gone:
        args = ["remove", str(image_id), "--index-dir", str(cli_dir), "--db", db_url]
        result = runner.invoke(app, args)
        assert result.exit_code == 0 and "removed 1 images" in result.output, result.output

    settings = world.settings(index_dir=http_dir, db_url=second_db_url, classifier_checkpoints=[])
    key = {"X-API-Key": world.api_key}
    async with running_app(settings, run_jobs=False) as client:
        for image_id in gone:
            assert (await client.delete(f"/images/{image_id}", headers=key)).status_code == 204
        assert (await client.delete(f"/images/{gone[0]}", headers=key)).status_code == 404
        ready = (await client.get("/ready")).json()
        assert ready["components"]["worker"]["index"]["ntotal"] == 24 - len(gone)

    assert calls == ["cli-index"] * 3 + ["http-index"] * 4  # the 404 too
    cli_state, http_state = _state(db_url, cli_dir), _state(second_db_url, http_dir)
    assert cli_state == http_state
    assert cli_state["index ids"] == [r[0] for r in cli_state["images"]]  # index == DB
    assert not set(gone) & set(cli_state["index ids"]) and cli_state["ntotal"] == 24 - len(gone)
    first_segment = [s for s in cli_state["segments"] if s[0] == 1]
    assert first_segment[0][-1] is not None  # the purged segment was dropped
