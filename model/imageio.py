"""Decode any image rsir meets (JPEG, PNG, grey, RGBA, 8/16-bit and multi-band TIFF) to RGB.

Remote-sensing TIFFs are often 16-bit or have more than three bands, which Pillow cannot
read: those go through tifffile, keep their first three bands as RGB and are scaled per image.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
DEFAULT_MAX_PIXELS = 40_000_000


class ImageDecodeError(ValueError):
    """The bytes are not an image rsir can read (corrupt, truncated, unknown or too large)."""


def is_tiff(data: bytes) -> bool:
    """Whether the bytes start with a TIFF or BigTIFF header."""
    return data[:4] in TIFF_MAGIC


def _scale_to_uint8(array: np.ndarray) -> np.ndarray:
    """Stretch one image's values to 0..255 (per image, over all kept bands)."""
    if array.dtype == np.uint8:
        return array
    values = array.astype(np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(array.shape, dtype=np.uint8)
    low, high = float(finite.min()), float(finite.max())
    if high <= low:
        return np.zeros(array.shape, dtype=np.uint8)
    scaled = (np.nan_to_num(values, nan=low) - low) / (high - low) * 255.0
    return np.clip(scaled + 0.5, 0, 255).astype(np.uint8)


def array_to_rgb(array: np.ndarray) -> Image.Image:
    """H x W, H x W x B or B x H x W array -> RGB image (first three bands, grey repeated)."""
    if array.ndim == 3 and array.shape[0] < min(array.shape[1:]) and array.shape[0] <= 16:
        array = np.moveaxis(array, 0, -1)  # band-first (planar) -> band-last
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise ImageDecodeError(f"unsupported array shape {array.shape}")
    bands = array.shape[-1]
    if bands >= 3:
        rgb = array[..., :3]
    elif bands == 2:  # grey + alpha
        rgb = np.repeat(array[..., :1], 3, axis=-1)
    else:
        rgb = np.repeat(array, 3, axis=-1)
    return Image.fromarray(np.ascontiguousarray(_scale_to_uint8(rgb)), mode="RGB")


def _decode_tiff(data: bytes, max_pixels: int) -> Image.Image:
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        page = tif.pages[0]
        shape = page.shape
        pixels = int(np.prod(shape[:2])) if len(shape) >= 2 else 0
        if page.imagewidth * page.imagelength > max_pixels:  # type: ignore[union-attr]
            raise ImageDecodeError(f"image has {pixels} pixels, over the limit of {max_pixels}")
        array = page.asarray()
    return array_to_rgb(np.asarray(array))


def _decode_pillow(data: bytes, max_pixels: int) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as exc:
            raise ImageDecodeError(str(exc)) from exc
        if image.width * image.height > max_pixels:
            raise ImageDecodeError(
                f"image has {image.width * image.height} pixels, over the limit of {max_pixels}"
            )
        image.load()
    return _to_rgb(image)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I", "F"):
        return array_to_rgb(np.asarray(image))
    if image.mode in ("RGBA", "LA", "P", "PA"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Bytes -> RGB Pillow image, or ImageDecodeError saying why not."""
    if not data:
        raise ImageDecodeError("empty file")
    try:
        if is_tiff(data):
            return _decode_tiff(data, max_pixels)
        return _decode_pillow(data, max_pixels)
    except ImageDecodeError:
        raise
    except Exception as exc:  # Pillow and tifffile raise many types for bad input
        raise ImageDecodeError(f"cannot decode image: {exc}") from exc


def read_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode an image file to RGB."""
    return decode_image(Path(path).read_bytes(), max_pixels)
