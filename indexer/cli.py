"""`rsir index`, `rsir search`, `rsir evaluate`, `rsir remove`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from rsir.settings import get_settings

app = typer.Typer()


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code=2)


@app.command()
def index(
    src: Annotated[Path, typer.Argument(help="Folder, .zip, .tar, .tar.gz or GeoTIFF scene.")],
    checkpoint: Annotated[Path | None, typer.Option(help="Embedder checkpoint.")] = None,
    index_dir: Annotated[Path | None, typer.Option(help="Where index and DB live.")] = None,
    db: Annotated[str | None, typer.Option(help="SQLAlchemy URL of the metadata DB.")] = None,
    index_factory: Annotated[
        str, typer.Option("--index", help="FAISS factory string: Flat, HNSW32, IVF1024,PQ64.")
    ] = "Flat",
    batch_size: Annotated[int | None, typer.Option()] = None,
    num_workers: Annotated[int | None, typer.Option(help="Decoding processes.")] = None,
    commit_every: Annotated[
        int, typer.Option(help="Images per committed index version (resume granularity).")
    ] = 2048,
    tile_size: Annotated[int, typer.Option(help="Scenes: tile side in output pixels.")] = 256,
    stride: Annotated[
        int | None, typer.Option(help="Scenes: source pixels between tiles (default: no overlap).")
    ] = None,
    resolution: Annotated[
        float | None, typer.Option(help="Scenes: ground size of a tile pixel (CRS units).")
    ] = None,
    bands: Annotated[
        str | None, typer.Option(help="Scenes: 1 or 3 band numbers, e.g. 4,3,2 (Sentinel-2).")
    ] = None,
    max_nodata: Annotated[
        float, typer.Option(help="Scenes: skip tiles with a larger nodata fraction.")
    ] = 0.5,
) -> None:
    """Add every new image of SRC to the index (re-runs add nothing; interrupted runs resume)."""
    from indexer.db import SchemaOutOfDateError
    from indexer.pipeline import index_source
    from indexer.scenes import SceneError, TileOptions, parse_bands
    from indexer.store import IndexTrainingError, ModelMismatchError
    from rsir.progress import progress_bar

    settings = get_settings(
        checkpoint=checkpoint,
        index_dir=index_dir,
        db_url=db,
        batch_size=batch_size,
        num_workers=num_workers,
    )
    if settings.checkpoint is None:
        raise _fail("no checkpoint: pass --checkpoint or set RSIR_CHECKPOINT")
    try:
        tiles = TileOptions(tile_size, stride, resolution, parse_bands(bands), max_nodata)
    except SceneError as exc:
        raise _fail(str(exc)) from None
    try:
        with progress_bar(f"indexing {src.name}") as progress:
            summary = index_source(
                src,
                checkpoint_path=settings.checkpoint,
                index_dir=settings.index_dir,
                db_url=settings.resolved_db_url(),
                factory=index_factory,
                batch_size=settings.batch_size,
                num_workers=settings.num_workers,
                device=settings.device,
                runtime=settings.runtime,
                max_pixels=settings.max_pixels,
                commit_every=commit_every,
                tiles=tiles,
                progress=progress,
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
    if summary.scene_id is not None:
        typer.echo(
            f"scene {summary.scene_id}: skipped {summary.skipped_nodata} nodata and "
            f"{summary.skipped_blank} blank tiles"
        )
    for path, reason in summary.failed[:10]:
        typer.echo(f"  skipped {path}: {reason}")


@app.command()
def search(
    image: Annotated[
        Path | None, typer.Argument(help="Query image (or --scene with --window/--place).")
    ] = None,
    index_dir: Annotated[Path | None, typer.Option()] = None,
    checkpoint: Annotated[
        Path | None, typer.Option(help="Default: the checkpoint that made the index.")
    ] = None,
    db: Annotated[str | None, typer.Option()] = None,
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

    settings = get_settings(index_dir=index_dir, db_url=db)
    if (image is None) == (scene is None):
        raise _fail("give a query IMAGE or --scene ID (with --window or --place)")
    try:
        area = BBox.parse(bbox) if bbox else None
        feedback = Feedback.parse(relevant, not_relevant)
        searcher = Searcher.open(
            settings.index_dir,
            checkpoint or None,
            settings.resolved_db_url(),
            settings.device,
            settings.runtime,
        )
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
def evaluate(
    checkpoint: Annotated[Path, typer.Option(help="Embedder checkpoint.")],
    out: Annotated[Path, typer.Option(help="Folder for results.json, split.json, pr_curve.png.")],
    dataset: Annotated[str, typer.Option(help="ucm, nwpu, satrem or folder.")] = "ucm",
    root: Annotated[Path | None, typer.Option(help="Data root (default RSIR_DATA_ROOT).")] = None,
    protocol: Annotated[str, typer.Option(help="split or all-vs-all.")] = "split",
    seed: Annotated[int | None, typer.Option(help="Split seed (default: training's).")] = None,
    per_class: Annotated[int | None, typer.Option(help="Use N images per class.")] = None,
    scales: Annotated[
        str,
        typer.Option(
            help="Multi-scale: size factors whose descriptors are summed, e.g. 1,0.707,1.414"
        ),
    ] = "1",
    whiten: Annotated[
        str | None, typer.Option(help="Whitening learned on the gallery side: pca or lw.")
    ] = None,
    whiten_dim: Annotated[int | None, typer.Option(help="Whitening output dimension.")] = None,
    dba: Annotated[int, typer.Option(help="Database-side augmentation neighbours (0: off).")] = 0,
    qe: Annotated[int, typer.Option(help="Alpha query-expansion neighbours (0: off).")] = 0,
) -> None:
    """mAP, mAP@k, P@k and per-class AP; writes JSON and a PR-curve PNG."""
    from indexer.evaluate import Refinements, evaluate_retrieval
    from rsir.progress import progress_bar

    settings = get_settings()
    try:
        with progress_bar("embedding") as progress:
            results = evaluate_retrieval(
                checkpoint_path=checkpoint,
                dataset=dataset,
                root=root or settings.data_root,
                out_dir=out,
                protocol=protocol,
                seed=seed,
                per_class=per_class,
                batch_size=settings.batch_size,
                num_workers=settings.num_workers,
                device=settings.device,
                runtime=settings.runtime,
                progress=progress,
                refinements=Refinements(
                    scales=tuple(float(s) for s in scales.split(",")),
                    whitening=whiten,
                    whitening_dim=whiten_dim,
                    dba=dba,
                    qe=qe,
                ),
            )
    except (FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from None
    typer.echo(format_results_table(results))
    typer.echo(f"results: {out / 'results.json'}; PR curve: {out / 'pr_curve.png'}")


def format_results_table(results: dict) -> str:
    """A plain-text table of an evaluation's figures."""
    lines = [
        f"dataset {results['dataset']['name']} ({results['dataset']['images']} images), "
        f"protocol {results['protocol']}, {results['n_queries']} queries x "
        f"{results['n_gallery']} gallery, init {results['init']}",
        f"{'k':>5}  {'mAP@k':>7}  {'P@k':>7}",
    ]
    for k, value in results["map_at_k"].items():
        lines.append(f"{k:>5}  {value:7.4f}  {results['precision_at_k'][k]:7.4f}")
    worst = sorted(results["per_class_ap"].items(), key=lambda kv: kv[1])
    lines.append("per-class AP: " + ", ".join(f"{c} {v:.3f}" for c, v in worst))
    lines.append(f"mAP (full ranking): {results['map']:.4f}")
    return "\n".join(lines)


@app.command()
def remove(
    ids: Annotated[list[int] | None, typer.Argument(help="Image ids to delete.")] = None,
    source: Annotated[str | None, typer.Option(help="Delete every image of this source.")] = None,
    index_dir: Annotated[Path | None, typer.Option()] = None,
    db: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Delete images from index and DB together, by id or by source."""
    from sqlalchemy import select

    from indexer.db import ImageRow, make_engine, make_sessionmaker
    from indexer.sources import canonical_source
    from indexer.store import IndexStore

    settings = get_settings(index_dir=index_dir, db_url=db)
    if not ids and source is None:
        raise _fail("give ids or --source")
    engine = make_engine(settings.resolved_db_url())
    wanted = list(ids or [])
    if source is not None:
        with make_sessionmaker(engine)() as session:
            wanted += list(
                session.scalars(
                    select(ImageRow.id).where(
                        ImageRow.source.in_([source, canonical_source(source)])
                    )
                )
            )
    try:
        with IndexStore.open(settings.index_dir, engine, writable=True) as store:
            removed = store.remove(wanted)
            typer.echo(f"removed {removed} images; index holds {store.ntotal}")
    except (FileNotFoundError, RuntimeError) as exc:
        raise _fail(str(exc)) from None


@app.command()
def compact(
    index_dir: Annotated[Path | None, typer.Option()] = None,
    db: Annotated[str | None, typer.Option()] = None,
    full: Annotated[
        bool, typer.Option(help="Merge every run of segments that fits (else: the tier policy).")
    ] = True,
    merge_factor: Annotated[
        int | None, typer.Option(min=2, help="Segments of one tier merged at once.")
    ] = None,
) -> None:
    """Merge small segments and drop removed vectors; each merge commits, so a re-run resumes."""
    from dataclasses import replace

    from indexer.db import make_engine
    from indexer.store import IndexStore

    settings = get_settings(index_dir=index_dir, db_url=db)
    engine = make_engine(settings.resolved_db_url())
    try:
        with IndexStore.open(settings.index_dir, engine, writable=True) as store:
            if merge_factor is not None:
                store.policy = replace(store.policy, factor=merge_factor)
            before = store.segment_count
            merges = store.compact(full=full)
            typer.echo(
                f"{merges} merges: {before} -> {store.segment_count} segments; "
                f"index holds {store.ntotal} (version {store.version})"
            )
    except (FileNotFoundError, RuntimeError) as exc:
        raise _fail(str(exc)) from None
    finally:
        engine.dispose()
