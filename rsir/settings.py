"""One typed settings object for every part of rsir, read from the environment (RSIR_*) and the CLI.

Why one object: the CLI, the indexer, the API and the worker must agree on where data, indexes
and the database live; each reads the fields it needs from here and nothing else is global.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

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
    classifier_checkpoints: list[Path] = Field(
        default_factory=list, description="Classifier checkpoints the worker serves."
    )
    db_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default: SQLite file in index_dir."
    )
    imagenet_weights: Path | None = Field(
        default=None, description="torchvision ImageNet weights file; else the torch cache."
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

    def resolved_db_url(self) -> str:
        """The metadata DB URL: the configured one, else a SQLite file beside the index."""
        return self.db_url or sqlite_url_for(self.index_dir)


def sqlite_url_for(index_dir: Path) -> str:
    """The embedded default metadata DB: a SQLite file beside the index."""
    return f"sqlite:///{(Path(index_dir) / 'metadata.db').resolve()}"


def get_settings(**overrides: object) -> Settings:
    """Settings from the environment, with CLI overrides (None values are ignored)."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**clean)  # type: ignore[arg-type]
