"""Indexing run: list a source, decode on DataLoader workers, embed in batches, add to the store.

Decoding, hashing and resizing happen on worker processes while the main process embeds, so
reading hides behind compute; a worker hands on each batch as one uint8 tensor, which the main
process normalises where the network runs (a quarter of the bytes of float images, and no
per-image tensor transfers). Entries already in the DB for this model and source are skipped before
any byte is read, which makes re-runs cheap and interrupted runs resumable.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sqlalchemy import select
from torch.utils.data import DataLoader, Dataset

from indexer.db import ImageRow, SceneRow, make_engine, make_sessionmaker, prepare_schema
from indexer.embedding import EmbeddingModel, load_embedding_model
from indexer.engines import VectorIndex, open_index
from indexer.index_model import MODEL_FILE as MODEL_FILE  # where it was
from indexer.index_model import read_model_file as read_model_file
from indexer.index_model import whitening_for_indexing, write_model_file
from indexer.options import IndexOptions
from indexer.scenes import TileOptions, TileSkipped, describe_scene, open_scene
from indexer.sources import Entry, SourceReader, canonical_source, list_entries, source_kind
from model.imageio import decode_image, max_file_bytes
from model.whitening import Whitening, descriptor_fingerprint

log = logging.getLogger(__name__)
ProgressFn = Callable[[int, int], None]


@dataclass
class IndexSummary:
    """What one run did. `failed` lists (path, reason) for the first failures."""

    source: str
    listed: int = 0
    added: int = 0
    skipped_existing: int = 0
    non_image: int = 0
    corrupt: int = 0
    skipped_nodata: int = 0  # scene tiles mostly nodata
    skipped_blank: int = 0  # scene tiles of one flat colour
    scene_id: int | None = None
    failed: list[tuple[str, str]] = field(default_factory=list)
    index_total: int = 0
    index_version: int = 0
    fingerprint: str = ""  # the index's descriptors: the checkpoint's, or checkpoint + whitening
    dim: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Decoded:
    entry: Entry
    pixels: torch.Tensor | None  # uint8 3 x S x S; None once stacked into the batch
    content_hash: str
    width: int
    height: int
    error: str | None
    skipped: str | None = None  # 'nodata' or 'blank' for a scene tile not worth indexing
    geo: dict[str, Any] = field(default_factory=dict)  # a scene tile's window and footprint


class _EntryDataset(Dataset[_Decoded]):
    """Reads, hashes, decodes and resizes one entry (`transform`: the model's pixel transform);
    a bad one becomes an error record, never a crash."""

    def __init__(
        self,
        reader: SourceReader,
        entries: list[Entry],
        transform: Callable[..., torch.Tensor],
        max_pixels: int,
    ) -> None:
        self.reader = reader
        self.entries = entries
        self.transform = transform
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> _Decoded:
        entry = self.entries[index]
        try:
            scene_tile = self.reader.scene_image(entry.path)
            if scene_tile is not None:  # a scene's tile: its pixels, no PNG round trip
                image = scene_tile
                digest = hashlib.sha256(image.tobytes()).hexdigest()
            else:
                data = self.reader.read(entry.path)
                digest = hashlib.sha256(data).hexdigest()
                image = decode_image(data, self.max_pixels)
            pixels = self.transform(image)
            geo = self.reader.geo_columns(entry.path)
            return _Decoded(entry, pixels, digest, image.width, image.height, None, geo=geo)
        except TileSkipped as exc:
            return _Decoded(entry, None, "", 0, 0, None, skipped=exc.reason)
        except Exception as exc:  # any entry that cannot be read is skipped and counted
            return _Decoded(entry, None, "", 0, 0, str(exc) or type(exc).__name__)


@dataclass
class _DecodedBatch:
    """What a decoding worker hands on: every entry's record and the decoded ones' pixels
    stacked into one uint8 tensor (one transfer a batch, not one an image)."""

    items: list[_Decoded]
    pixels: torch.Tensor | None

    def pin_memory(self) -> _DecodedBatch:
        """Called by DataLoader(pin_memory=True), for a CUDA device."""
        pinned = None if self.pixels is None else self.pixels.pin_memory()
        return _DecodedBatch(self.items, pinned)


def _collate(items: list[_Decoded]) -> _DecodedBatch:
    good = [item.pixels for item in items if item.pixels is not None]
    for item in items:
        item.pixels = None  # sent once, in the stacked tensor
    return _DecodedBatch(items, torch.stack(good) if good else None)


Batches = Iterator[tuple[list[_Decoded], np.ndarray | None]]


def _local_batches(
    reader: SourceReader, todo: list[Entry], model: EmbeddingModel, options: IndexOptions
) -> Batches:
    """Decoded entries (DataLoader workers) and the descriptors of the good ones."""
    loader = DataLoader(
        _EntryDataset(reader, todo, model.pixel_transform, options.max_pixels),
        batch_size=options.batch_size,
        num_workers=options.num_workers,
        collate_fn=_collate,
        persistent_workers=False,
        pin_memory=model.pin_memory,
        prefetch_factor=4 if options.num_workers else None,
    )
    for batch in loader:
        pixels = batch.pixels
        yield batch.items, model.embed_pixels(pixels) if pixels is not None else None


@dataclass
class _RayJob:
    """Decoding and embedding on a Ray cluster (indexer/distributed.py)."""

    address: str
    checkpoint: Path
    source: Path
    tiles: TileOptions | None
    whitening: Whitening | None = None  # applied here: the actors return raw descriptors

    def batches(self, todo: list[Entry], options: IndexOptions) -> Batches:
        from indexer.distributed import ray_batches

        for results in ray_batches(
            self.address, todo, checkpoint=self.checkpoint, source=self.source,
            tiles=self.tiles, max_pixels=options.max_pixels, device=options.device,
            runtime=options.runtime, batch_size=options.batch_size,
        ):  # fmt: skip
            items = [
                _Decoded(
                    entry,
                    None,
                    str(r["hash"]),
                    int(r["width"]),
                    int(r["height"]),
                    str(r["error"]) or None,
                    skipped=str(r["skipped"]) or None,
                    geo=json.loads(str(r["geo"])),
                )
                for entry, r in results
            ]
            good = [r["vector"] for _, r in results if r["ok"]]
            vectors = np.stack(good).astype(np.float32) if good else None
            if vectors is not None and self.whitening is not None:
                vectors = self.whitening.apply(vectors)
            yield items, vectors


def index_source(
    source: Path | str,
    checkpoint_path: Path,
    options: IndexOptions,
    *,
    tiles: TileOptions | None = None,
    progress: ProgressFn | None = None,
) -> IndexSummary:
    """Index every new image of `source` into `options.index_dir`; safe to interrupt and re-run.

    A GeoTIFF scene is cut into tiles as `tiles` says (size, stride, resolution, bands).
    With `options.whitening` (an `rsir whiten` artifact of this checkpoint), or when the index
    already uses one, vectors are whitened and reduced before they enter the index.
    """
    source_path = Path(source)
    canonical = canonical_source(source_path)
    index_dir = Path(options.index_dir)
    index_dir.mkdir(parents=True, exist_ok=True)
    url = options.resolved_db_url()
    prepare_schema(url)
    engine = make_engine(url)
    model, ckpt = load_embedding_model(checkpoint_path, options.device, options.runtime)
    whitener = whitening_for_indexing(index_dir, ckpt.fingerprint, options.whitening)
    model = model.with_whitening(whitener)
    fingerprint = descriptor_fingerprint(ckpt.fingerprint, whitener)
    summary = IndexSummary(source=canonical, fingerprint=fingerprint, dim=model.dim)
    try:
        with open_index(
            index_dir, engine, fingerprint, model.dim, options.index_factory, writable=True,
            vector_engine=options.vector_engine, milvus_uri=options.milvus_uri,
            milvus_collection=options.milvus_collection,
        ) as store:  # fmt: skip
            write_model_file(
                index_dir, checkpoint_path, ckpt.fingerprint, whitener, options.whitening
            )
            listing = list_entries(source_path, tiles)
            if source_kind(source_path) == "geotiff":
                summary.scene_id = record_scene(engine, source_path, canonical, tiles)
            summary.listed = len(listing.entries)
            summary.non_image = len(listing.non_image)
            with make_sessionmaker(engine)() as session:
                known = set(
                    session.scalars(
                        select(ImageRow.path).where(
                            ImageRow.source == canonical,
                            ImageRow.model_fingerprint == fingerprint,
                        )
                    )
                )
            todo = [e for e in listing.entries if e.path not in known]
            summary.skipped_existing = len(listing.entries) - len(todo)
            store.choose_factory(len(todo))  # `--index auto`: by the archive's size
            reader = SourceReader(
                source_path, tiles, max_entry_bytes=max_file_bytes(options.max_pixels)
            )
            ray = (
                _RayJob(options.ray_address, checkpoint_path, source_path, tiles, whitener)
                if options.ray_address
                else None
            )
            _embed_and_add(store, model, reader, todo, canonical, summary, options, progress, ray)
            summary.index_total = store.ntotal
            summary.index_version = store.version
    finally:
        engine.dispose()
    return summary


def record_scene(engine: Any, source: Path, canonical: str, tiles: TileOptions | None) -> int:
    """The scene's row (bands, stretch, CRS, footprint), made on its first indexing run."""
    bands = (tiles or TileOptions()).bands
    with open_scene(source) as dataset:
        record = describe_scene(dataset, canonical, bands)
    columns = record.columns()
    with make_sessionmaker(engine).begin() as session:
        row = session.scalar(
            select(SceneRow).where(SceneRow.source == canonical, SceneRow.bands == columns["bands"])
        )
        if row is None:
            row = SceneRow(**columns)
            session.add(row)
            session.flush()
        return int(row.id)


def _embed_and_add(
    store: VectorIndex,
    model: EmbeddingModel,
    reader: SourceReader,
    todo: list[Entry],
    canonical: str,
    summary: IndexSummary,
    options: IndexOptions,
    progress: ProgressFn | None,
    ray: _RayJob | None = None,
) -> None:
    if not todo:
        if progress:
            progress(0, 0)
        return
    train_size = options.train_size
    if store.needs_training():  # train on a random sample of the archive, not its first files
        todo = random.Random(0).sample(todo, len(todo))
        train_size = max(train_size, store.min_training_vectors())
    stream = (
        _local_batches(reader, todo, model, options) if ray is None else ray.batches(todo, options)
    )
    pending_rows: list[ImageRow] = []
    pending_vectors: list[np.ndarray] = []
    done = 0

    def flush(final: bool) -> None:
        if not pending_rows:
            return
        if store.needs_training():
            if len(pending_rows) < train_size and not final:
                return  # keep gathering a training sample
            store.train(np.vstack(pending_vectors))
        store.add(pending_rows, np.vstack(pending_vectors))
        summary.added += len(pending_rows)
        pending_rows.clear()
        pending_vectors.clear()

    for batch, vectors in stream:
        good = [item for item in batch if item.error is None and item.skipped is None]
        for item in batch:
            if item.skipped == "nodata":
                summary.skipped_nodata += 1
            elif item.skipped == "blank":
                summary.skipped_blank += 1
            if item.error is not None:
                summary.corrupt += 1
                if len(summary.failed) < 100:
                    summary.failed.append((item.entry.path, item.error))
                log.warning("skipped %s: %s", item.entry.path, item.error)
        if good and vectors is not None:
            pending_vectors.append(vectors)
            pending_rows.extend(
                ImageRow(
                    source=canonical,
                    path=item.entry.path,
                    content_hash=item.content_hash,
                    width=item.width,
                    height=item.height,
                    label=item.entry.label,
                    scene_id=summary.scene_id,
                    **item.geo,
                )
                for item in good
            )
        done += len(batch)
        if len(pending_rows) >= options.commit_every:
            flush(final=False)
        if progress:
            progress(done, len(todo))
    flush(final=True)
