"""Batched embedding of decoded images on the best device."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from model.embedder import Embedder
from model.transforms import Preprocessing


class EmbeddingModel:
    """An embedder in eval mode on a device, with its preprocessing: images -> unit vectors."""

    def __init__(self, net: Embedder, preprocessing: Preprocessing, device: torch.device) -> None:
        self.net = net.to(device).eval()
        self.preprocessing = preprocessing
        self.transform = preprocessing.eval_transform()
        self.device = device

    @property
    def dim(self) -> int:
        return self.net.dim

    @torch.inference_mode()
    def embed_tensors(self, batch: torch.Tensor) -> np.ndarray:
        """B x 3 x H x W preprocessed tensors -> B x D float32 unit vectors."""
        out = self.net(batch.to(self.device, non_blocking=True))
        return out.float().cpu().numpy()

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """RGB images -> B x D float32 unit vectors (one forward pass)."""
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.embed_tensors(torch.stack([self.transform(im) for im in images]))
