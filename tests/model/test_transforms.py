"""Preprocessing: the uint8 path the indexer's decoding workers use gives the float tensors of
the eval transform bit for bit, one image or a batch, on real images."""

from __future__ import annotations

import torch

from model.export import image_files
from model.imageio import read_image
from model.transforms import Preprocessing
from tests.conftest import UCM_IMAGES


def test_pixels_then_normalize_equal_the_eval_transform_exactly() -> None:
    pre = Preprocessing.for_backbone("efficientnet_lite0", 224)
    images = [read_image(p) for p in image_files(UCM_IMAGES, 6)]
    reference = torch.stack([pre.eval_transform()(im) for im in images])
    pixels = torch.stack([pre.pixel_transform()(im) for im in images])
    assert pixels.dtype == torch.uint8 and pixels.shape == (6, 3, 224, 224)
    assert torch.equal(pre.normalize(pixels), reference)
    assert torch.equal(pre.normalize(pixels[0]), reference[0])


def test_normalize_uses_the_checkpoint_mean_and_std() -> None:
    pre = Preprocessing(32, (0.5, 0.25, 0.0), (0.5, 0.25, 1.0))
    white = torch.full((1, 3, 32, 32), 255, dtype=torch.uint8)
    out = pre.normalize(white)
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([1.0, 3.0, 1.0]))
