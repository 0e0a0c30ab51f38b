"""Decoding and embedding spread over a Ray cluster; the calling process stays the single writer.

Why: one machine's CPUs (decoding) and GPU (embedding) bound the indexing rate of a large
archive. `rsir index SRC --ray ADDRESS` sends the entries through Ray Data: `map_batches` runs
an actor pool in which every actor loads the embedder once (a GPU each where the cluster has
GPUs), reads, hashes and decodes its entries exactly as the single-process DataLoader does, and
returns descriptors; the driver commits what comes back, in order, through the same store, so
the consistency protocol, resumability and skip-and-count of bad entries are unchanged.
Needs the optional extra `rsir[ray]`. A cluster: `ray start --head` on one node, `ray start
--address HEAD:6379` on the others, then `rsir index SRC --ray HEAD:6379` (docs/architecture.md).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from indexer.sources import Entry

LOCAL = "local"


class _EmbedActor:
    """One Ray actor: the embedder loaded once, and the source opened once."""

    def __init__(
        self, checkpoint: str, source: str, tiles: Any, max_pixels: int, device: str,
        runtime: str = "auto",
    ) -> None:  # fmt: skip
        from indexer.embedding import load_embedding_model
        from indexer.sources import SourceReader
        from model.imageio import max_file_bytes

        self.model, _ = load_embedding_model(Path(checkpoint), device, runtime)
        self.reader = SourceReader(Path(source), tiles, max_entry_bytes=max_file_bytes(max_pixels))
        self.max_pixels = max_pixels

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        from indexer.pipeline import _EntryDataset

        entries = [
            Entry(str(p), None if lbl == "" else str(lbl))
            for p, lbl in zip(batch["path"], batch["label"], strict=True)
        ]
        dataset = _EntryDataset(self.reader, entries, self.model.pixel_transform, self.max_pixels)
        items = [dataset[i] for i in range(len(entries))]
        good = [item.pixels for item in items if item.pixels is not None]
        vectors = np.zeros((len(items), self.model.dim), np.float32)
        if good:
            embedded = self.model.embed_pixels(torch.stack(good))
            vectors[[i for i, item in enumerate(items) if item.pixels is not None]] = embedded
        return {
            "order": batch["order"],
            "vector": vectors,
            "ok": np.asarray([item.pixels is not None for item in items]),
            "hash": np.asarray([item.content_hash for item in items], dtype=object),
            "width": np.asarray([item.width for item in items]),
            "height": np.asarray([item.height for item in items]),
            "error": np.asarray([item.error or "" for item in items], dtype=object),
            "skipped": np.asarray([item.skipped or "" for item in items], dtype=object),
            "geo": np.asarray([json.dumps(item.geo, default=str) for item in items], dtype=object),
        }


def ray_batches(
    address: str,
    todo: list[Entry],
    *,
    checkpoint: Path,
    source: Path,
    tiles: Any,
    max_pixels: int,
    device: str,
    runtime: str = "auto",
    batch_size: int,
) -> Iterator[list[tuple[Entry, dict[str, Any]]]]:
    """Decode and embed `todo` on a Ray cluster; yields (entry, result) lists in input order."""
    try:
        import ray
    except ImportError:  # pragma: no cover - depends on the install
        raise RuntimeError("--ray needs the optional extra: pip install 'rsir[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=None if address == LOCAL else address, log_to_driver=False)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    cpus = int(ray.cluster_resources().get("CPU", 1))
    items = [{"order": i, "path": e.path, "label": e.label or ""} for i, e in enumerate(todo)]
    dataset = ray.data.from_items(items).map_batches(
        _EmbedActor,
        fn_constructor_kwargs={
            "checkpoint": str(checkpoint),
            "source": str(source),
            "tiles": tiles,
            "max_pixels": max_pixels,
            "device": "cuda" if gpus else device,
            "runtime": runtime,
        },
        batch_size=batch_size,
        concurrency=max(1, gpus or cpus),
        num_gpus=1 if gpus else 0,
        num_cpus=0 if gpus else 1,
    )
    for batch in dataset.iter_batches(batch_size=batch_size, batch_format="numpy"):
        out = []
        for row in range(len(batch["order"])):
            result = {key: batch[key][row] for key in batch}
            out.append((todo[int(result["order"])], result))
        yield out
