"""`rsir index`, `rsir search`, `rsir evaluate`, `rsir remove`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from rsir_common.options import DATA_ROOT, DB_URL, SettingOverrides, opt, setting_options
from rsir_common.settings import Settings, get_settings

app = typer.Typer()


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code=2)


def _absolute_lite_uri(uri: str | None) -> str | None:
    """A Milvus Lite file as an absolute path (the DB records it); URLs unchanged."""
    if uri is None or "://" in uri:
        return uri
    return str(Path(uri).resolve())


@app.command()
@setting_options(
    "checkpoint index_dir",
    DB_URL,
    opt(
        "index_factory",
        "--index",
        help="FAISS factory string (Flat, HNSW32, IVF1024,PQ64) or auto: chosen from the "
        "archive's size (docs/architecture.md).",
    ),
    "batch_size num_workers commit_every tile_size stride resolution bands max_nodata whitening",
    opt("vector_engine", "--engine", help="faiss (segments in --index-dir) or milvus."),
    opt("milvus_uri", help="Milvus Lite file (path) or cluster URL (http://host:19530)."),
    opt("ray_address", "--ray", help="Decode and embed on this Ray cluster (HEAD:6379, or local)."),
)
def index(
    src: Annotated[Path, typer.Argument(help="Folder, .zip, .tar, .tar.gz or GeoTIFF scene.")],
    *,
    overrides: SettingOverrides,
) -> None:
    """Add every new image of SRC to the index (re-runs add nothing; interrupted runs resume);
    with --whitening, whitened and reduced vectors (the index then whitens its queries)."""
    from indexer.db import SchemaOutOfDateError
    from indexer.options import IndexOptions
    from indexer.pipeline import index_source
    from indexer.scenes import SceneError, TileOptions, parse_bands
    from indexer.store import IndexTrainingError, ModelMismatchError
    from rsir_common.progress import progress_bar

    milvus_uri = _absolute_lite_uri(overrides["milvus_uri"])
    settings = get_settings(**{**overrides, "milvus_uri": milvus_uri})
    if settings.checkpoint is None:
        raise _fail("no checkpoint: pass --checkpoint or set RSIR_CHECKPOINT")
    try:
        tiles = TileOptions(
            settings.tile_size,
            settings.stride,
            settings.resolution,
            parse_bands(settings.bands),
            settings.max_nodata,
        )
    except SceneError as exc:
        raise _fail(str(exc)) from None
    options = IndexOptions.from_settings(settings)
    try:
        with progress_bar(f"indexing {src.name}") as progress:
            summary = index_source(
                src, settings.checkpoint, options, tiles=tiles, progress=progress
            )
    except (
        ModelMismatchError,
        IndexTrainingError,
        SchemaOutOfDateError,
        FileNotFoundError,
        ValueError,
    ) as exc:
        raise _fail(str(exc)) from None
    typer.echo(
        f"listed {summary.listed}, added {summary.added}, already indexed "
        f"{summary.skipped_existing}, corrupt {summary.corrupt}, non-image {summary.non_image}; "
        f"index holds {summary.index_total} (version {summary.index_version})"
    )
    typer.echo(f"vectors: {summary.dim}-d, model {summary.fingerprint}")
    if summary.scene_id is not None:
        typer.echo(
            f"scene {summary.scene_id}: skipped {summary.skipped_nodata} nodata and "
            f"{summary.skipped_blank} blank tiles"
        )
    for path, reason in summary.failed[:10]:
        typer.echo(f"  skipped {path}: {reason}")


@app.command()
@setting_options(
    "index_dir",
    opt("checkpoint", help="Embedder checkpoint; default: the one of the index."),
    DB_URL,
)
def search(
    image: Annotated[
        Path | None, typer.Argument(help="Query image (or --scene with --window/--place).")
    ] = None,
    *,
    overrides: SettingOverrides,
    k: Annotated[int, typer.Option("-k", "--k", min=1)] = 10,
    label: Annotated[str | None, typer.Option(help="Only hits of this class.")] = None,
    bbox: Annotated[
        str | None,
        typer.Option(help="Only tiles whose footprint meets west,south,east,north (degrees)."),
    ] = None,
    scene: Annotated[
        int | None, typer.Option(help="Query by place: the id of an indexed scene.")
    ] = None,
    window: Annotated[
        str | None, typer.Option(help="With --scene: pixel window col,row,width,height.")
    ] = None,
    place: Annotated[
        str | None, typer.Option(help="With --scene: lon/lat window west,south,east,north.")
    ] = None,
    relevant: Annotated[
        str | None,
        typer.Option(help="Relevance feedback: ids ID,ID of hits to move the query toward."),
    ] = None,
    not_relevant: Annotated[
        str | None,
        typer.Option(help="Relevance feedback: ids ID,ID of hits to move the query away from."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    as_geojson: Annotated[
        bool, typer.Option("--geojson", help="Print a GeoJSON FeatureCollection.")
    ] = False,
) -> None:
    """Rank the indexed images by similarity to IMAGE (or to a place of an indexed scene);
    with --relevant / --not-relevant, the query first moves Rocchio-style toward and away
    from those indexed images' stored descriptors."""
    from indexer.area import BBox
    from indexer.feedback import Feedback, UnknownFeedbackIdError
    from indexer.geojson import feature_collection
    from indexer.geoquery import decode_query, parse_window, place_image
    from indexer.search import Searcher
    from indexer.store import ModelMismatchError
    from model.imageio import ImageDecodeError

    settings = get_settings(**overrides)
    if (image is None) == (scene is None):
        raise _fail("give a query IMAGE or --scene ID (with --window or --place)")
    try:
        area = BBox.parse(bbox) if bbox else None
        feedback = Feedback.parse(relevant, not_relevant)
        searcher = Searcher.from_settings(settings)
        engine = searcher.store.engine
        if image is not None:
            query = decode_query(image.read_bytes(), engine, settings.max_pixels)
        else:
            assert scene is not None
            pixels = parse_window(window) if window else None
            query = place_image(engine, scene, pixels, BBox.parse(place) if place else None).image
    except (ModelMismatchError, FileNotFoundError, ImageDecodeError, ValueError) as exc:
        raise _fail(str(exc)) from None  # ValueError: also a bad bbox, window or scene id
    try:
        hits = searcher.search_images([query], k, label, area, feedback)[0]
    except (UnknownFeedbackIdError, ValueError) as exc:
        raise _fail(str(exc)) from None
    if as_geojson:
        typer.echo(json.dumps(feature_collection(h.to_dict() for h in hits), indent=1))
        return
    if as_json:
        typer.echo(json.dumps([h.to_dict() for h in hits], indent=1))
        return
    typer.echo(f"{'rank':>4}  {'score':>6}  {'id':>7}  {'label':<20} path")
    for rank, hit in enumerate(hits, 1):
        place_text = ""
        if hit.bbox is not None:
            lon, lat = (hit.bbox[0] + hit.bbox[2]) / 2, (hit.bbox[1] + hit.bbox[3]) / 2
            place_text = f"  @ {lat:.5f}, {lon:.5f}"
        typer.echo(
            f"{rank:>4}  {hit.score:6.3f}  {hit.id:>7}  {hit.label or '-':<20} {hit.path}"
            + place_text
        )


@app.command()
@setting_options(
    "checkpoint dataset",
    DATA_ROOT,
    "protocol seed per_class scales whiten whiten_dim dba qe",
    opt("evaluate_on_index", "--on-index/--on-checkpoint"),
    "index_dir",
    DB_URL,
)
def evaluate(
    out: Annotated[Path, typer.Option(help="Folder for results.json, split.json, pr_curve.png.")],
    *,
    overrides: SettingOverrides,
) -> None:
    """mAP, mAP@k, P@k and per-class AP of the checkpoint (or, --on-index, of the index as
    built); writes JSON and a PR-curve PNG."""
    from indexer.evaluate import Refinements, evaluate_retrieval, format_results_table
    from indexer.options import EvaluateOptions
    from rsir_common.progress import progress_bar

    settings = get_settings(**overrides)
    refinements = Refinements(
        scales=tuple(float(s) for s in settings.scales.split(",")),
        whitening=settings.whiten,
        whitening_dim=settings.whiten_dim,
        dba=settings.dba,
        qe=settings.qe,
    )
    if settings.evaluate_on_index:
        if refinements != Refinements():
            raise _fail("refinements measure a checkpoint; an index applies its own whitening")
        _evaluate_index(settings, out)
        return
    if settings.checkpoint is None:
        raise _fail("no checkpoint: pass --checkpoint or set RSIR_CHECKPOINT")
    options = EvaluateOptions.from_settings(settings)
    try:
        with progress_bar("embedding") as progress:
            results = evaluate_retrieval(
                settings.checkpoint, out, options, refinements=refinements, progress=progress
            )
    except (FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from None
    typer.echo(format_results_table(results))
    typer.echo(f"results: {out / 'results.json'}; PR curve: {out / 'pr_curve.png'}")


def _evaluate_index(settings: Settings, out: Path) -> None:
    """`rsir evaluate --on-index`: the index's figures, queried as `rsir search` queries it
    (its checkpoint: RSIR_CHECKPOINT / --checkpoint if set, else the one it records)."""
    from indexer.evaluate import format_results_table
    from indexer.evaluate_index import evaluate_index
    from indexer.options import EvaluateOptions
    from indexer.search import Searcher
    from indexer.store import ModelMismatchError
    from rsir_common.progress import progress_bar

    options = EvaluateOptions.from_settings(settings)
    try:
        searcher = Searcher.from_settings(settings)
        with progress_bar("embedding queries") as progress:
            results = evaluate_index(searcher, out, options, progress=progress)
    except (ModelMismatchError, FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from None
    index = results["index"]
    typer.echo(
        f"index {index['dir']}: {index['ntotal']} {index['dim']}-d vectors of model "
        f"{index['fingerprint']} ({index['factory']})"
    )
    typer.echo(format_results_table(results))
    typer.echo(f"results: {out / 'results.json'}; PR curve: {out / 'pr_curve.png'}")


@app.command()
@setting_options("index_dir", DB_URL)
def remove(
    ids: Annotated[list[int] | None, typer.Argument(help="Image ids to delete.")] = None,
    source: Annotated[str | None, typer.Option(help="Delete every image of this source.")] = None,
    *,
    overrides: SettingOverrides,
) -> None:
    """Delete images from index and DB together, by id or by source."""
    from indexer.db import make_engine
    from indexer.removal import remove_images, source_image_ids

    settings = get_settings(**overrides)
    if not ids and source is None:
        raise _fail("give ids or --source")
    engine = make_engine(settings.resolved_db_url())
    try:
        wanted = list(ids or [])
        if source is not None:
            wanted += source_image_ids(engine, source)
        removal = remove_images(settings.index_dir, engine, wanted)
    except (FileNotFoundError, RuntimeError) as exc:
        raise _fail(str(exc)) from None
    finally:
        engine.dispose()
    typer.echo(f"removed {removal.removed} images; index holds {removal.ntotal}")


@app.command()
@setting_options(
    "index_dir", DB_URL, opt("compact_full", "--full/--no-full"), opt("merge_factor", min=2)
)
def compact(*, overrides: SettingOverrides) -> None:
    """Merge small segments and drop removed vectors; each merge commits, so a re-run resumes."""
    from dataclasses import replace

    from indexer.db import make_engine
    from indexer.store import IndexStore

    settings = get_settings(**overrides)
    engine = make_engine(settings.resolved_db_url())
    try:
        with IndexStore.open(settings.index_dir, engine, writable=True) as store:
            if settings.merge_factor is not None:
                store.policy = replace(store.policy, factor=settings.merge_factor)
            before = store.segment_count
            merges = store.compact(full=settings.compact_full)
            typer.echo(
                f"{merges} merges: {before} -> {store.segment_count} segments; "
                f"index holds {store.ntotal} (version {store.version})"
            )
    except (FileNotFoundError, RuntimeError) as exc:
        raise _fail(str(exc)) from None
    finally:
        engine.dispose()
