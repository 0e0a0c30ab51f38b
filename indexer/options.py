"""The options of the indexer's jobs (indexing, evaluation, whitening), each one typed object.

Why: each job takes a dozen settings (batches, decoding workers, device, runtime, then the
index's or the dataset's), which the CLI, the demo, the service's job handlers and the
benchmarks passed one keyword at a time. The fields are named as the settings are, so
`from_settings` builds a job's options from the one Settings object and a caller says only
what it decides itself; the defaults are the library's (a Flat index when nothing is said).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rsir_common.settings import MAX_PIXELS, FromSettings, sqlite_url_for


@dataclass(frozen=True, kw_only=True)
class EmbedOptions(FromSettings):
    """How a job embeds images: batch size, decoding workers, device and embedder runtime."""

    batch_size: int = 32
    num_workers: int = 2
    device: str = "auto"
    runtime: str = "auto"


@dataclass(frozen=True, kw_only=True)
class IndexOptions(EmbedOptions):
    """An indexing run (`index_source`): where the index and its DB are, what a new index is
    made of, how often a version is committed, what whitens and who decodes."""

    index_dir: Path
    db_url: str | None = None  # None: a SQLite file in index_dir
    index_factory: str = "Flat"  # of a new index; 'auto': chosen from the archive's size
    commit_every: int = 2048  # images per committed index version (resume granularity)
    train_size: int = 65536  # vectors gathered to train an IVF/PQ index
    max_pixels: int = MAX_PIXELS
    whitening: Path | None = None  # an `rsir whiten` artifact for a new index
    vector_engine: str | None = None  # None: the engine that made the index (faiss if new)
    milvus_uri: str | None = None
    milvus_collection: str = "rsir"
    ray_address: str | None = None  # decode and embed on this Ray cluster

    def resolved_db_url(self) -> str:
        """The metadata DB URL: the given one, else a SQLite file beside the index."""
        return self.db_url or sqlite_url_for(Path(self.index_dir))


@dataclass(frozen=True, kw_only=True)
class EvaluateOptions(EmbedOptions):
    """A retrieval evaluation (of a checkpoint, or of an index as built): the labelled images
    and the protocol; seed and train fraction None take the checkpoint's split."""

    dataset: str
    data_root: Path
    protocol: str = "split"
    seed: int | None = None
    train_fraction: float | None = None
    per_class: int | None = None


@dataclass(frozen=True, kw_only=True)
class WhitenOptions(EmbedOptions):
    """Learning a whitening artifact: the labelled images, the method and its output
    dimension, and whether only the training side of the checkpoint's split is seen."""

    dataset: str
    data_root: Path
    per_class: int | None = None
    whitening_method: str = "lw"
    whitening_dim: int | None = 256
    whitening_train_split: bool = False
