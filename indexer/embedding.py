"""Batched embedding of decoded images on the best runtime: the one place a checkpoint becomes an
embedding model (the worker, the indexer, `rsir search` and evaluation all load it here)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from model.checkpoint import Checkpoint, load_embedder
from model.cores import available_cores
from model.device import best_device
from model.embedder import Embedder
from model.runtimes import RuntimeChoice, choose_runtime
from model.transforms import Preprocessing
from model.whitening import Whitening

log = logging.getLogger(__name__)


class EmbeddingModel:
    """An embedder with its preprocessing: images -> unit vectors. It runs in torch (eval mode,
    channels_last, inference_mode; fp16 autocast on a GPU) or, when `choice` holds an exported
    model, in that runtime on the CPU. With `whitening`, every vector it returns is whitened,
    reduced and re-normalised, so an index and its queries cannot get different treatment."""

    def __init__(
        self,
        net: Embedder,
        preprocessing: Preprocessing,
        device: torch.device,
        choice: RuntimeChoice | None = None,
        channels_last: bool = True,
        whitening: Whitening | None = None,
    ) -> None:
        self.net = net.to(device).eval()
        self.channels_last = channels_last
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.preprocessing = preprocessing
        self.transform = preprocessing.eval_transform()
        self.pixel_transform = preprocessing.pixel_transform()
        self.device = device
        self.choice = choice or RuntimeChoice("torch", None, "torch asked for")
        self._dim = net.dim
        if whitening is not None and whitening.input_dim != net.dim:
            raise ValueError(
                f"whitening takes {whitening.input_dim}-d descriptors; "
                f"this embedder makes {net.dim}-d ones"
            )
        self.whitening = whitening

    def with_preprocessing(self, preprocessing: Preprocessing) -> EmbeddingModel:
        """The same network with other preprocessing (e.g. another input size)."""
        return EmbeddingModel(self.net, preprocessing, self.device, whitening=self.whitening)

    def with_whitening(self, whitening: Whitening | None) -> EmbeddingModel:
        """The same network and runtime, its vectors whitened by `whitening` (None: raw)."""
        return EmbeddingModel(
            self.net, self.preprocessing, self.device, self.choice, self.channels_last, whitening
        )

    @property
    def dim(self) -> int:
        """Dimension of the vectors it returns (the whitening's output, if any)."""
        return self.whitening.dim if self.whitening is not None else self._dim

    @property
    def runtime(self) -> str:
        """'torch' or the export in use ('onnx-fp32', 'openvino-int8', ...)."""
        return self.choice.name

    @property
    def pin_memory(self) -> bool:
        """DataLoaders feeding this model pin their batches only for a CUDA device."""
        return self.device.type == "cuda" and self.choice.runner is None

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        """fp16 autocast on CUDA (descriptors are L2-normalised, so half precision keeps their
        ranking); nothing on the CPU, where fp32 is the checked arithmetic."""
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def embed_tensors(self, batch: torch.Tensor) -> np.ndarray:
        """B x 3 x H x W preprocessed tensors -> B x D float32 unit vectors."""
        raw = self._raw_vectors(batch)
        return self.whitening.apply(raw) if self.whitening is not None else raw

    def embed_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """uint8 B x 3 x H x W (from `pixel_transform`) -> B x D float32 unit vectors, normalised
        where the network runs (a GPU is sent a quarter of the bytes)."""
        if self.choice.runner is None:
            pixels = pixels.to(self.device, non_blocking=True)
        return self.embed_tensors(self.preprocessing.normalize(pixels))

    def _raw_vectors(self, batch: torch.Tensor) -> np.ndarray:
        if self.choice.runner is not None:
            return self.choice.runner(batch.cpu().numpy())
        with torch.inference_mode(), self.autocast():
            x = batch.to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out = self.net(x)
        return out.float().cpu().numpy()

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """RGB images -> B x D float32 unit vectors (one forward pass)."""
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.embed_tensors(torch.stack([self.transform(im) for im in images]))


def configure_torch_threads() -> int:
    """Run torch on the cores this process really has (cgroup quota and affinity), unless the
    user set OMP_NUM_THREADS; returns the thread count."""
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(available_cores())
    return torch.get_num_threads()


def load_embedding_model(
    checkpoint_path: Path, device: str = "auto", runtime: str = "auto"
) -> tuple[EmbeddingModel, Checkpoint]:
    """Rebuild a checkpoint's embedder on the runtime `runtime` (RSIR_RUNTIME) asks for; an
    export that cannot be used falls back to torch, and the log says why."""
    net, ckpt = load_embedder(Path(checkpoint_path))
    target = best_device(device)
    threads = configure_torch_threads()
    choice = choose_runtime(
        Path(checkpoint_path), ckpt.fingerprint, runtime, threads, on_gpu=target.type == "cuda"
    )
    if choice.runner is None and runtime not in ("torch", "auto"):
        level = logging.WARNING  # asked for an export that cannot be used
    else:
        level = logging.INFO if choice.runner is not None else logging.DEBUG
    log.log(level, "embedder %s runs on %s (%s)", ckpt.fingerprint, choice.name, choice.reason)
    return EmbeddingModel(net, ckpt.preprocessing, target, choice), ckpt
