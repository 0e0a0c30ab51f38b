"""Train -> index -> search -> evaluate on real UCM images, through the real CLI."""

from __future__ import annotations

import io
import itertools
import json
import tarfile
import zipfile
from pathlib import Path

import faiss
import numpy as np
import pytest
import tifffile
from click.testing import Result
from PIL import Image
from sqlalchemy import func, select
from typer.testing import CliRunner

from indexer.db import ImageRow, make_engine, make_sessionmaker, upgrade_db
from indexer.options import IndexOptions
from indexer.pipeline import index_source
from indexer.search import Searcher
from indexer.store import IndexStore, ModelMismatchError
from model.imageio import read_image
from rsir.cli import app
from tests.conftest import ucm_files


@pytest.fixture(autouse=True)
def _schema_at_head(request: pytest.FixtureRequest) -> None:
    """A server DB is migrated in one place (`rsir db upgrade`) before anything indexes into it;
    the embedded SQLite default migrates itself. Do here what deployment does."""
    if "db_url" in request.fixturenames:
        upgrade_db(request.getfixturevalue("db_url"))


pytestmark = pytest.mark.slow
runner = CliRunner()


def db_ids_and_index_ids(index_dir: Path, url: str) -> tuple[list[int], list[int]]:
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        db_ids = sorted(session.scalars(select(ImageRow.id)))
    store = IndexStore.open(index_dir, engine)
    index_ids = store.ids().tolist()
    engine.dispose()
    return db_ids, index_ids


def evaluate_cli(checkpoint: Path, root: Path, out: Path, *extra: str) -> Result:
    """`rsir evaluate` on a <class>/<image> folder."""
    args = ["evaluate", "--checkpoint", str(checkpoint), "--dataset", "folder"]
    return runner.invoke(app, [*args, "--root", str(root), "--out", str(out), *extra])


def test_help_lists_the_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("train", "index", "search", "evaluate", "remove"):
        assert command in result.output


def test_index_search_and_reindex(
    small_folder: Path, trained_checkpoint: Path, tmp_path: Path
) -> None:
    index_dir = tmp_path / "idx"
    args = [
        "index",
        str(small_folder),
        "--checkpoint",
        str(trained_checkpoint),
        "--index-dir",
        str(index_dir),
        "--num-workers",
        "1",
    ]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "added 40" in first.output
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "added 0, already indexed 40" in again.output

    query = small_folder / "harbor" / ucm_files("harbor", 3)[2].name
    result = runner.invoke(
        app, ["search", str(query), "--index-dir", str(index_dir), "-k", "5", "--json"]
    )
    assert result.exit_code == 0, result.output
    hits = json.loads(result.output)
    assert len(hits) == 5
    assert hits[0]["path"] == "harbor/" + query.name and hits[0]["label"] == "harbor"
    assert hits[0]["score"] > 0.99
    assert all(a["score"] >= b["score"] for a, b in itertools.pairwise(hits))

    db_ids, index_ids = db_ids_and_index_ids(index_dir, f"sqlite:///{index_dir / 'metadata.db'}")
    assert db_ids == index_ids and len(db_ids) == 40

    removed = runner.invoke(app, ["remove", str(hits[1]["id"]), "--index-dir", str(index_dir)])
    assert removed.exit_code == 0 and "removed 1" in removed.output
    db_ids, index_ids = db_ids_and_index_ids(index_dir, f"sqlite:///{index_dir / 'metadata.db'}")
    assert db_ids == index_ids and len(db_ids) == 39 and hits[1]["id"] not in db_ids

    by_source = runner.invoke(
        app, ["remove", "--source", str(small_folder), "--index-dir", str(index_dir)]
    )
    assert by_source.exit_code == 0 and "removed 39" in by_source.output


def test_search_with_another_models_checkpoint_is_refused(
    small_folder: Path, trained_checkpoint: Path, other_checkpoint: Path, tmp_path: Path
) -> None:
    index_dir = tmp_path / "idx"
    index_source(
        small_folder / "beach", trained_checkpoint, IndexOptions(index_dir=index_dir, num_workers=0)
    )
    query = next((small_folder / "beach").iterdir())
    result = runner.invoke(
        app,
        [
            "search",
            str(query),
            "--index-dir",
            str(index_dir),
            "--checkpoint",
            str(other_checkpoint),
        ],
    )
    assert result.exit_code == 2
    from model.checkpoint import load_checkpoint

    mine, theirs = load_checkpoint(trained_checkpoint), load_checkpoint(other_checkpoint)
    assert mine.fingerprint in result.output and theirs.fingerprint in result.output
    with pytest.raises(ModelMismatchError):
        index_source(
            small_folder / "forest",
            other_checkpoint,
            IndexOptions(index_dir=index_dir, num_workers=0),
        )


def test_zip_with_corrupt_and_text_files_skips_and_counts(
    trained_checkpoint: Path, tmp_path: Path
) -> None:
    archive = tmp_path / "tiles.zip"
    good = ucm_files("forest", 3)
    with zipfile.ZipFile(archive, "w") as zf:
        for path in good:
            zf.write(path, f"forest/{path.name}")
        data = good[0].read_bytes()
        zf.writestr("forest/broken.jpg", data[: len(data) // 4])
        zf.writestr("forest/notes.txt", "field notes, not an image")
        zf.writestr("beach/fake.png", b"this is text with an image name")
    summary = index_source(
        archive, trained_checkpoint, IndexOptions(index_dir=tmp_path / "idx", num_workers=1)
    )
    assert summary.added == 3
    assert summary.corrupt == 2 and summary.non_image == 1
    assert {p for p, _ in summary.failed} == {"forest/broken.jpg", "beach/fake.png"}
    searcher = Searcher.open(tmp_path / "idx")
    hits = searcher.search_images([read_image(good[1])], k=1)[0]
    assert hits[0].path == f"forest/{good[1].name}" and hits[0].label == "forest"
    assert hits[0].score > 0.99


def test_tar_gz_and_geotiff_scene_sources(trained_checkpoint: Path, tmp_path: Path) -> None:
    archive = tmp_path / "tiles.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        for path in ucm_files("beach", 4):
            tf.add(path, arcname=f"UCMerced_LandUse/Images/beach/{path.name}")
    summary = index_source(
        archive, trained_checkpoint, IndexOptions(index_dir=tmp_path / "idx", num_workers=1)
    )
    assert summary.added == 4
    # A 512 x 512 16-bit 4-band "scene" made of four real images -> four 256-px tiles
    tiles = [np.asarray(read_image(p)) for p in ucm_files("forest", 2) + ucm_files("harbor", 2)]
    top, bottom = np.hstack(tiles[:2]), np.hstack(tiles[2:])
    scene = np.vstack([top, bottom]).astype(np.uint16) * 200
    scene = np.concatenate([scene, scene[..., :1]], axis=-1)
    scene_path = tmp_path / "scene.tif"
    tifffile.imwrite(scene_path, scene, photometric="minisblack", planarconfig="contig")
    summary = index_source(
        scene_path, trained_checkpoint, IndexOptions(index_dir=tmp_path / "idx", num_workers=1)
    )
    assert summary.added == 4 and summary.corrupt == 0
    from indexer.sources import read_entry

    png = read_entry(str(scene_path), "tile_256_0_256.png")
    assert read_image_bytes(png).size == (256, 256)


def read_image_bytes(data: bytes) -> Image.Image:
    """A PIL image from encoded bytes."""
    return Image.open(io.BytesIO(data))


def test_evaluate_writes_json_and_png(
    small_folder: Path, trained_checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "eval"
    result = evaluate_cli(trained_checkpoint, small_folder, out)
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert 0.0 <= results["map"] <= 1.0
    assert results["n_queries"] == 8 and results["n_gallery"] == 32  # 20 % / 80 % of 4 x 10
    assert set(results["map_at_k"]) == {"5", "10", "20"}  # k <= gallery size
    assert set(results["per_class_ap"]) == {"agricultural", "beach", "forest", "harbor"}
    assert results["init"] == "random" and results["split"]["seed"] == 0
    assert (out / "pr_curve.png").read_bytes()[:4] == b"\x89PNG"
    split = json.loads((out / "split.json").read_text())
    assert not set(split["train"]) & set(split["test"])
    all_vs_all = evaluate_cli(
        trained_checkpoint, small_folder, tmp_path / "ava", "--protocol", "all-vs-all"
    )
    assert all_vs_all.exit_code == 0, all_vs_all.output
    ava = json.loads((tmp_path / "ava" / "results.json").read_text())
    assert ava["n_queries"] == 40 and ava["n_gallery"] == 39


def test_store_agrees_with_db_on_both_databases(
    db_url: str, small_folder: Path, trained_checkpoint: Path, tmp_path: Path
) -> None:
    index_dir = tmp_path / "idx"
    summary = index_source(
        small_folder / "agricultural",
        trained_checkpoint,
        IndexOptions(
            index_dir=index_dir, db_url=db_url, num_workers=0, batch_size=4, commit_every=4
        ),
    )
    assert summary.added == 10 and summary.index_version >= 3
    db_ids, index_ids = db_ids_and_index_ids(index_dir, db_url)
    assert db_ids == index_ids and len(db_ids) == 10
    files = sorted(p.name for p in index_dir.glob("segment-*"))
    assert len(files) == 3 and all(f.endswith(".faiss") for f in files)  # one per commit


def test_failed_index_write_rolls_back(
    db_url: str,
    small_folder: Path,
    trained_checkpoint: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    index_dir = tmp_path / "idx"
    index_source(
        small_folder / "beach",
        trained_checkpoint,
        IndexOptions(index_dir=index_dir, db_url=db_url, num_workers=0),
    )

    def disk_full(*_args: object) -> None:
        raise OSError("No space left on device")

    monkeypatch.setattr(faiss, "write_index", disk_full)
    with pytest.raises(OSError, match="No space"):
        index_source(
            small_folder / "forest",
            trained_checkpoint,
            IndexOptions(index_dir=index_dir, db_url=db_url, num_workers=0),
        )
    monkeypatch.undo()
    engine = make_engine(db_url)
    with make_sessionmaker(engine)() as session:
        assert session.scalar(select(func.count(ImageRow.id))) == 10
    engine.dispose()
    db_ids, index_ids = db_ids_and_index_ids(index_dir, db_url)
    assert db_ids == index_ids and len(db_ids) == 10
    resumed = index_source(
        small_folder / "forest",
        trained_checkpoint,
        IndexOptions(index_dir=index_dir, db_url=db_url, num_workers=0),
    )
    assert resumed.added == 10 and resumed.index_total == 20


def test_evaluation_and_training_skip_an_unreadable_image(tmp_path: Path) -> None:
    from model.train_embedder import TrainConfig, train_embedder
    from tests.conftest import make_class_folder

    folder = make_class_folder(tmp_path / "data", 5, ("beach", "forest"))
    (folder / "beach" / "beach99.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
    ckpt = train_embedder(
        TrainConfig(
            dataset="folder",
            root=str(folder),
            backbone="resnet18",
            image_size=32,
            batch_size=2,
            max_epochs=1,
            negatives=1,
            num_workers=0,
            pretrained=False,
        ),
        tmp_path / "e.pt",
    )
    result = evaluate_cli(ckpt, folder, tmp_path / "ev", "--protocol", "all-vs-all")
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert results["unreadable"] == ["beach/beach99.jpg"]
    assert results["n_queries"] == 10
