"""What made an index: its checkpoint and, optionally, its whitening artifact (model.json).

Why it is recorded: `rsir search`, `rsir evaluate --on-index`, the API and the worker must
turn a query into exactly the kind of vector the index holds, with no flag to repeat. The
artifact is copied beside the index (whitening.npz), so the index stays usable when the
original file moves, and its fingerprint is recorded, so a replaced copy is refused rather
than silently searched with. The DB records the same binding: the index's model fingerprint
is the descriptors' (model/whitening.py `descriptor_fingerprint`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from model.whitening import (
    Whitening,
    WhiteningMismatchError,
    descriptor_fingerprint,
    load_whitening,
)

log = logging.getLogger(__name__)
MODEL_FILE = "model.json"
WHITENING_FILE = "whitening.npz"


def write_model_file(
    index_dir: Path,
    checkpoint_path: Path,
    checkpoint_fingerprint: str,
    whitening: Whitening | None = None,
    whitening_source: Path | None = None,
) -> None:
    """Record which checkpoint (and whitening, copied beside the index) made the index."""
    index_dir = Path(index_dir)
    record: dict[str, Any] = {
        "checkpoint": str(Path(checkpoint_path).resolve()),
        "checkpoint_fingerprint": checkpoint_fingerprint,
        "fingerprint": descriptor_fingerprint(checkpoint_fingerprint, whitening),
    }
    if whitening is not None:
        source = str(Path(whitening_source).resolve()) if whitening_source else None
        if source is None:  # the index's own artifact again: keep where it came from
            held = (read_model_file(index_dir) or {}).get("whitening") or {}
            source = (
                held.get("source") if held.get("fingerprint") == whitening.fingerprint() else None
            )
        whitening.save(index_dir / WHITENING_FILE)
        record["whitening"] = {"file": WHITENING_FILE, "source": source, **whitening.identity()}
    partial = index_dir / (MODEL_FILE + ".partial")
    partial.write_text(json.dumps(record, indent=1))
    partial.replace(index_dir / MODEL_FILE)


def read_model_file(index_dir: Path) -> dict[str, Any] | None:
    """The checkpoint (and whitening) recorded by the last indexing run, if any."""
    path = Path(index_dir) / MODEL_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def recorded_checkpoint(record: dict[str, Any]) -> str:
    """The checkpoint fingerprint of a model.json (older ones name only the checkpoint's)."""
    return str(record.get("checkpoint_fingerprint") or record["fingerprint"])


def recorded_whitening(index_dir: Path, checkpoint_fingerprint: str) -> Whitening | None:
    """The whitening an index's queries need (None: it holds raw descriptors).

    Refused (WhiteningMismatchError) when it was learned for another checkpoint, or when the
    copy beside the index is not the artifact the index was made with.
    """
    record = read_model_file(index_dir)
    entry = (record or {}).get("whitening")
    if not entry:
        return None
    path = Path(index_dir) / entry["file"]
    if not path.is_file():
        raise FileNotFoundError(f"the index's whitening {path} is missing: re-index")
    whitening = load_whitening(path, checkpoint_fingerprint)
    if whitening.fingerprint() != entry["fingerprint"]:
        raise WhiteningMismatchError(
            f"whitening {path} is {whitening.fingerprint()}, but the index in {index_dir} was "
            f"made with {entry['fingerprint']}: restore that artifact or re-index"
        )
    return whitening


def whitening_for_indexing(
    index_dir: Path, checkpoint_fingerprint: str, path: Path | None
) -> Whitening | None:
    """The whitening an indexing run applies: the artifact asked for, else the one the index
    already uses; refused when it is not the index's own or not this checkpoint's."""
    record = read_model_file(index_dir)
    same_model = record is not None and recorded_checkpoint(record) == checkpoint_fingerprint
    if path is None:
        return recorded_whitening(index_dir, checkpoint_fingerprint) if same_model else None
    whitening = load_whitening(Path(path), checkpoint_fingerprint)
    if same_model and record is not None and record["fingerprint"] != whitening.fingerprint():
        held = record.get("whitening")
        raise WhiteningMismatchError(
            f"the index in {index_dir} holds "
            + (f"vectors whitened by {held['fingerprint']}" if held else "unwhitened vectors")
            + f"; {path} would make {whitening.fingerprint()}: index into a new --index-dir "
            "or use the index's own artifact"
        )
    return whitening


def whitening_for_serving(
    index_dir: Path, checkpoint_fingerprint: str, configured: Path | None
) -> Whitening | None:
    """The whitening a server applies to queries: the index's own; before any index exists,
    the configured artifact (RSIR_WHITENING) that its index jobs will use."""
    if read_model_file(index_dir) is not None:
        return recorded_whitening(index_dir, checkpoint_fingerprint)
    return load_whitening(configured, checkpoint_fingerprint) if configured else None
