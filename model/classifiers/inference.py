"""Load a trained classifier checkpoint and answer "what kind of scene is this?" for the service.

Stable API for the worker: `load_classifier(path, device) -> LoadedClassifier`, then
`.predict(images) -> list[list[float]]` (class probabilities, one list per image, one batched
forward pass) and `.explain(image) -> bytes | None` (a grey PNG of the method's own map: the
attention map for DDRL-AM, the CAM of the predicted class for the others; None for a method
without one).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from model.checkpoint import load_checkpoint
from model.classifiers.base import SceneClassifier
from model.classifiers.gradcam import map_to_png
from model.classifiers.registry import build_deployed
from model.transforms import Preprocessing


@dataclass
class LoadedClassifier:
    """A classifier ready to serve: its identity (for responses and logs) and its network."""

    name: str
    kind: str
    dataset: str
    class_names: list[str]
    fingerprint: str
    init: str
    method: str
    backbone: str
    image_size: int
    net: SceneClassifier = field(repr=False)
    preprocessing: Preprocessing = field(repr=False)
    device: torch.device = field(repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _batch(self, images: list[Image.Image]) -> torch.Tensor:
        transform = self.preprocessing.eval_transform()
        return torch.stack([transform(image.convert("RGB")) for image in images]).to(self.device)

    def predict(self, images: list[Image.Image]) -> list[list[float]]:
        """Class probabilities (in `class_names` order, summing to 1) for each image."""
        if not images:
            return []
        x = self._batch(images)
        # no_grad, not inference_mode: DDRL-AM computes Grad-CAM inside its forward pass.
        with self._lock, torch.no_grad():
            probabilities = torch.softmax(self.net(x).float(), dim=1)
        return [[float(p) for p in row] for row in probabilities.cpu()]

    def explain(self, image: Image.Image) -> bytes | None:
        """PNG (8-bit grey, the image's size) of the map behind the predicted class, or None
        for a method without one (the network's `explain` decides, not its name)."""
        x = self._batch([image])
        with self._lock, torch.no_grad():
            maps = self.net.explain(x)
        if maps is None:
            return None
        return map_to_png(maps[0], size=image.size)


def load_classifier(path: Path, device: torch.device | str = "cpu") -> LoadedClassifier:
    """Rebuild the deployed network of a classifier checkpoint, in eval mode on `device`."""
    path = Path(path)
    ckpt = load_checkpoint(path)
    if ckpt.kind != "classifier":
        raise ValueError(f"{path} holds a {ckpt.kind} checkpoint, not a classifier")
    net = build_deployed(ckpt.config)
    try:
        net.load_state_dict(ckpt.state_dict)
    except RuntimeError as exc:
        raise ValueError(
            f"{path} does not fit the {ckpt.config['method']} network of this rsir (made by an "
            f"older layout? retrain it): {str(exc).splitlines()[0]}"
        ) from None
    target = torch.device(device)
    net.to(target).eval()
    return LoadedClassifier(
        name=str(ckpt.extra.get("name") or path.stem),
        kind=ckpt.kind,
        dataset=ckpt.dataset,
        class_names=list(ckpt.class_names),
        fingerprint=ckpt.fingerprint,
        init=ckpt.init,
        method=str(ckpt.config["method"]),
        backbone=str(ckpt.config.get("backbone", "")),
        image_size=int(ckpt.config.get("image_size", ckpt.preprocessing.image_size)),
        net=net,
        preprocessing=ckpt.preprocessing,
        device=target,
    )
