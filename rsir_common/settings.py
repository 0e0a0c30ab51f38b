"""One typed settings object for every part of rsir, read from the environment (RSIR_*) and the CLI.

Why one object: the CLI, the indexer, the API and the worker must agree on where data, indexes
and the database live; each reads the fields it needs from here and nothing else is global.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal, Self

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# The decompression-bomb guard's one constant: width x height of the largest image decoded;
# decoded samples may take 4 bytes a pixel of it (model/imageio.py), archive entries no more
# than that uncompressed.
MAX_PIXELS = 40_000_000


class Settings(BaseSettings):
    """Configuration of rsir. Every field can be set as RSIR_<NAME> in the environment."""

    model_config = SettingsConfigDict(env_prefix="RSIR_", env_file=".env", extra="ignore")

    # Data and artefacts
    data_root: Path = Field(
        default=Path("../shared/data"), description="Folder holding the benchmark datasets."
    )
    index_dir: Path = Field(default=Path("var/index"), description="FAISS index and SQLite DB.")
    checkpoint: Path | None = Field(default=None, description="Embedder checkpoint (.pt).")
    whitening: Path | None = Field(
        default=None,
        description="Whitening artifact (`rsir whiten`) applied to descriptors before they are "
        "indexed; an index records its own, and its queries always use that one.",
    )
    classifier_checkpoints: list[Path] = Field(
        default_factory=list, description="Classifier checkpoints the worker serves."
    )
    db_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default: SQLite file in index_dir."
    )
    imagenet_weights: Path | None = Field(
        default=None, description="torchvision ImageNet weights file; else the torch cache."
    )

    # Vector engine (docs/architecture.md): FAISS segments in index_dir, or a Milvus collection
    vector_engine: Literal["faiss", "milvus"] | None = Field(
        default=None, description="None: the engine that made the index (faiss for a new one)."
    )
    milvus_uri: str | None = Field(
        default=None, description="Milvus Lite file or cluster URL (http://host:19530)."
    )
    milvus_collection: str = "rsir"
    ray_address: str | None = Field(
        default=None,
        description="Ray cluster (HEAD:6379, or local) that decodes and embeds for rsir index.",
    )

    # Compute
    device: str = Field(default="auto", description="auto, cpu, cuda or cuda:N.")
    batch_size: int = Field(default=32, ge=1)
    num_workers: int = Field(default=2, ge=0, description="DataLoader decoding processes.")
    runtime: Literal["auto", "torch", "onnx", "openvino"] = Field(
        default="auto",
        description="Embedder runtime (rsir export makes the others); auto: the fastest export "
        "that passed its parity check, else torch. Unusable ones fall back to torch, logged.",
    )

    # Service
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = Field(default=None, description="Key for write endpoints (X-API-Key).")
    worker_url: str | None = Field(
        default=None, description="URL of a separate `rsir worker`; None runs it in-process."
    )
    worker_host: str = "127.0.0.1"
    worker_port: int = 8001
    keep_alive_timeout: int = Field(
        default=5,
        ge=1,
        description="Seconds a connection may stay idle before the server closes it: after a "
        "response, and from its opening until a whole request head has arrived.",
    )
    max_upload_bytes: int = Field(default=32 * 1024 * 1024, ge=1)
    max_pixels: int = Field(
        default=MAX_PIXELS,
        ge=1,
        description="Decompression-bomb guard: most pixels (width x height) of an image decoded; "
        "its samples may take 4 bytes a pixel of it, an archive entry no more than that.",
    )
    batch_max_size: int = Field(default=16, ge=1)
    batch_max_wait_ms: float = Field(default=5.0, ge=0)
    job_max_attempts: int = Field(default=2, ge=1)
    job_lease_seconds: float = Field(default=60.0, gt=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    cache_dir: Path | None = Field(
        default=None,
        description="Caches (evaluation embeddings, DDRL-AM Grad-CAM maps); default: "
        "<index_dir>/cache.",
    )

    # The commands' options: each `--option` of a command defaults to its setting here, so
    # every option can also be set as RSIR_<NAME>. Where one option name means two things in
    # two commands, the setting carries the command's prefix (train_, classifier_, demo_,
    # export_); `rsir <command> --help` names each option's variable.

    # Datasets and splits (train, evaluate, train-classifier, evaluate-classifier)
    dataset: str = Field(default="ucm", description="ucm, nwpu, satrem or folder.")
    per_class: int | None = Field(default=None, description="Use N images per class.")
    seed: int | None = Field(
        default=None,
        description="Split and training seed; default: 0 for training, the checkpoint's own "
        "for evaluation.",
    )
    backbone: str | None = Field(
        default=None,
        description="Any registered backbone (rsir weights list); default: resnet50 when its "
        "ImageNet file is here, else efficientnet_lite0.",
    )
    image_size: int | None = Field(
        default=None, description="Square input size; default: the backbone's native size."
    )
    pretrained: bool = Field(
        default=True, description="ImageNet initialisation (--no-pretrained: random init)."
    )
    freeze_stages: int = Field(
        default=0, description="Keep the backbone's first N of 4 stages fixed (fast on a CPU)."
    )
    progress: bool = Field(default=True, description="Show a progress bar.")

    # Embedder training (rsir train)
    pooling: str = Field(default="gem", description="gem, spoc or mac.")
    attention: bool = Field(default=True, description="Dual attention on or off.")
    train_batch_size: int = Field(default=8, description="Tuples per step.")
    max_epochs: int = Field(default=10, description="Contrastive (hard-negative) epochs.")
    ce_epochs: int = Field(
        default=0, description="Classification warm-start epochs before the contrastive ones."
    )
    lr: float = Field(default=1e-4, description="Learning rate.")
    warmup_steps: int = Field(default=50, description="Linear learning-rate warm-up.")
    min_scale: float = Field(
        default=0.5, description="Scale augmentation: crops of at least this area fraction."
    )
    margin: float = Field(default=0.7, description="Contrastive margin tau.")
    negatives: int = Field(default=2, description="Hard negatives per query.")

    # Scene classifiers (rsir train-classifier, evaluate-classifier)
    classifier_method: str = Field(default="plain", description="Classification method.")
    train_ratio: float = Field(
        default=0.8, description="Train fraction: UCM 0.8, NWPU 0.1 or 0.2 (papers)."
    )
    classifier_max_epochs: int = Field(
        default=40, description="Training epochs (DDRL-AM: per step)."
    )
    classifier_batch_size: int = Field(default=32, description="Images per step.")
    classifier_lr: float | None = Field(
        default=None, description="Base learning rate; default: the method's paper recipe."
    )
    classes: str | None = Field(
        default=None, description="Comma-separated class names to keep (quick runs)."
    )
    attention_epochs: int | None = Field(
        default=None, description="DDRL-AM step 1 epochs (default: max-epochs)."
    )
    repeats: int = Field(
        default=1, description="Seeded splits; beyond the first, the recipe is retrained."
    )

    # Indexing (rsir index; the service's index jobs)
    index_factory: str = Field(
        default="auto",
        description="FAISS factory string of a new index (Flat, HNSW32, ...) or auto: chosen "
        "from the archive's size (indexer/factory.py).",
    )
    commit_every: int = Field(
        default=2048, description="Images per committed index version (resume granularity)."
    )
    tile_size: int = Field(default=256, description="Scenes: tile side in output pixels.")
    stride: int | None = Field(
        default=None, description="Scenes: source pixels between tiles (default: no overlap)."
    )
    resolution: float | None = Field(
        default=None, description="Scenes: ground size of a tile pixel (CRS units)."
    )
    bands: str | None = Field(
        default=None, description="Scenes: 1 or 3 band numbers, e.g. 4,3,2 (Sentinel-2)."
    )
    max_nodata: float = Field(
        default=0.5, description="Scenes: skip tiles with a larger nodata fraction."
    )
    merge_factor: int | None = Field(
        default=None, ge=2, description="rsir compact: segments of one tier merged at once."
    )
    compact_full: bool = Field(
        default=True,
        description="rsir compact: merge every run of segments that fits (else: the tier policy).",
    )

    # Retrieval evaluation (rsir evaluate)
    protocol: str = Field(default="split", description="split or all-vs-all.")
    scales: str = Field(
        default="1",
        description="Multi-scale: size factors whose descriptors are summed, e.g. 1,0.707,1.414",
    )
    whiten: str | None = Field(
        default=None, description="Whitening learned on the gallery side: pca or lw."
    )
    whiten_dim: int | None = Field(default=None, description="Whitening output dimension.")
    dba: int = Field(default=0, description="Database-side augmentation neighbours (0: off).")
    qe: int = Field(default=0, description="Alpha query-expansion neighbours (0: off).")
    evaluate_on_index: bool = Field(
        default=False,
        description="Measure the index in index_dir as built (its vectors, FAISS type and "
        "whitening, queried as rsir search queries it) instead of the checkpoint alone.",
    )

    # Learned whitening (rsir whiten; the artifact then goes to rsir index --whitening)
    whitening_method: Literal["lw", "pca"] = Field(
        default="lw", description="lw (Radenovic's, from matching pairs) or pca."
    )
    whitening_dim: int | None = Field(
        default=256, ge=1, description="Output dimension (the index's), at most the input's."
    )
    whitening_train_split: bool = Field(
        default=False, description="Learn on the training side of the checkpoint's split only."
    )

    # Export (rsir export)
    export_runtime: str = Field(default="onnx", description="onnx or openvino.")
    int8: bool = Field(default=False, description="Static int8 quantization (needs --calibration).")
    calibration: Path | None = Field(
        default=None, description="Folder of real images for int8 calibration."
    )
    calibration_count: int = Field(default=300, description="Calibration images used.")
    parity_images: Path | None = Field(
        default=None,
        description="Real images for the parity check (default: the calibration images, "
        "else data_root).",
    )
    parity_count: int = Field(default=64, description="Parity images used.")

    # The demo (rsir demo)
    demo_train_epochs: int = Field(default=4, description="Classification (warm-start) epochs.")
    demo_metric_epochs: int = Field(
        default=0, description="Contrastive hard-negative epochs after them."
    )
    demo_image_size: int = Field(default=192, description="Input size of the demo embedder.")
    demo_serve: bool = Field(default=True, description="End with the service running.")

    def resolved_db_url(self) -> str:
        """The metadata DB URL: the configured one, else a SQLite file beside the index."""
        return self.db_url or sqlite_url_for(self.index_dir)

    def resolved_cache_dir(self) -> Path:
        """The cache folder: the configured one, else `cache` inside the index folder."""
        return self.cache_dir or Path(self.index_dir) / "cache"


def sqlite_url_for(index_dir: Path) -> str:
    """The embedded default metadata DB: a SQLite file beside the index."""
    return f"sqlite:///{(Path(index_dir) / 'metadata.db').resolve()}"


def get_settings(**overrides: object) -> Settings:
    """Settings from the environment, with CLI overrides (None values are ignored)."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**clean)  # type: ignore[arg-type]


class FromSettings:
    """Base of a job's options dataclass whose fields are named as the settings they take:
    `from_settings` fills each field that has a setting of its name from the one Settings
    object (fields without one keep their defaults); `overrides` win, for what a caller
    decides itself (a job's own dataset, the demo's Flat index)."""

    __dataclass_fields__: ClassVar[dict[str, Any]]  # set by @dataclass on each subclass

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> Self:
        names = [name for name in cls.__dataclass_fields__ if name in Settings.model_fields]
        return cls(**{**{name: getattr(settings, name) for name in names}, **overrides})


def option_help(field: str, text: str | None = None) -> str:
    """The help of a command-line option that sets `field`: what it does, its variable and
    its default (the option's own default is None: "not given, use the setting")."""
    info = Settings.model_fields[field]
    default = info.get_default(call_default_factory=True)
    shown = "-" if default is None else default
    return f"{text or info.description or ''} [RSIR_{field.upper()}; default {shown}]".lstrip()
