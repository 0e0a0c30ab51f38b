"""Checkpoints that rebuild their network: config, classes, preprocessing, weights, fingerprint.

The fingerprint (weights + preprocessing) binds an index to the model that made it, so that a
search with another model is refused instead of being silently wrong.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from model.embedder import Embedder, EmbedderConfig, build_embedder
from model.transforms import Preprocessing

CHECKPOINT_VERSION = 1


def fingerprint(state_dict: dict[str, torch.Tensor], preprocessing: Preprocessing) -> str:
    """SHA-256 (first 16 hex digits) of the weights in key order and the preprocessing."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().cpu().contiguous()
        digest.update(key.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.numpy().tobytes() if tensor.numel() else b"")
    digest.update(json.dumps(preprocessing.to_dict(), sort_keys=True).encode())
    return digest.hexdigest()[:16]


@dataclass
class Checkpoint:
    """What a .pt file holds. `kind` is 'embedder' or 'classifier'; `config` rebuilds the net."""

    kind: str
    config: dict[str, Any]
    preprocessing: Preprocessing
    class_names: list[str]
    state_dict: dict[str, torch.Tensor]
    init: str
    dataset: str = ""
    fingerprint: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_payload(self) -> dict[str, Any]:
        return {
            "version": CHECKPOINT_VERSION,
            "kind": self.kind,
            "config": self.config,
            "preprocessing": self.preprocessing.to_dict(),
            "class_names": self.class_names,
            "state_dict": self.state_dict,
            "init": self.init,
            "dataset": self.dataset,
            "fingerprint": self.fingerprint or fingerprint(self.state_dict, self.preprocessing),
            "extra": self.extra,
        }


def atomic_torch_save(payload: Any, path: Path) -> None:
    """Write to a temporary file, fsync, rename: a crash never leaves half a checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        torch.save(payload, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def save_checkpoint(checkpoint: Checkpoint, path: Path) -> str:
    """Save atomically; returns the fingerprint."""
    payload = checkpoint.to_payload()
    atomic_torch_save(payload, path)
    return str(payload["fingerprint"])


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint written by `save_checkpoint` (CPU tensors)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(payload, dict) or "kind" not in payload:
        raise ValueError(f"{path} is not an rsir checkpoint")
    return Checkpoint(
        kind=payload["kind"],
        config=payload["config"],
        preprocessing=Preprocessing.from_dict(payload["preprocessing"]),
        class_names=list(payload["class_names"]),
        state_dict=payload["state_dict"],
        init=payload["init"],
        dataset=payload.get("dataset", ""),
        fingerprint=payload["fingerprint"],
        extra=payload.get("extra", {}),
    )


def embedder_checkpoint(
    net: Embedder,
    preprocessing: Preprocessing,
    class_names: list[str],
    init: str,
    dataset: str,
    extra: dict[str, Any] | None = None,
) -> Checkpoint:
    """Package a trained embedder."""
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    return Checkpoint(
        "embedder",
        net.config.to_dict(),
        preprocessing,
        class_names,
        state,
        init,
        dataset,
        fingerprint(state, preprocessing),
        extra or {},
    )


def load_embedder(path: Path) -> tuple[Embedder, Checkpoint]:
    """Rebuild an embedder from its checkpoint (weights loaded, eval mode, on CPU)."""
    ckpt = load_checkpoint(path)
    if ckpt.kind != "embedder":
        raise ValueError(f"{path} holds a {ckpt.kind}, not an embedder")
    net, _ = build_embedder(EmbedderConfig.from_dict(ckpt.config), pretrained=False)
    net.load_state_dict(ckpt.state_dict)
    net.eval()
    return net, ckpt
