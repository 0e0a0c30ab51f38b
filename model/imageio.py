"""Decode any image rsir meets (JPEG, PNG, grey, RGBA, 8/16-bit and multi-band TIFF) to RGB.

Remote-sensing TIFFs are often 16-bit or have more than three bands, which Pillow cannot
read: those go through tifffile, keep their first three bands as RGB and are scaled per image.

Every decode is checked against one cap, `max_pixels` (settings: RSIR_MAX_PIXELS), from the
header alone, before any pixel is decoded: width x height must stay within it, and the decoded
samples (width x height x bands x bytes per sample) within `BYTES_PER_PIXEL` bytes a pixel of
it, so neither a huge canvas nor a small canvas of many wide bands can exhaust memory.
Orientation tags (EXIF, TIFF) are applied here, so queries and indexed images agree.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, ImageMode

from rsir_common.settings import MAX_PIXELS

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
# Decoded bytes allowed per allowed pixel: an 8-bit RGBA image of max_pixels.
BYTES_PER_PIXEL = 4
# What a file may hold beyond its samples (headers, metadata, a colour profile).
FILE_OVERHEAD_BYTES = 1 << 20
_ORIENTATION_TAG = 274
# EXIF/TIFF orientation (tag 274) -> the transpose that makes the image upright, as
# Pillow's ImageOps.exif_transpose does (which would also copy images that need no turn).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class ImageDecodeError(ValueError):
    """The bytes are not an image rsir can read (corrupt, truncated, unknown or too large)."""


class ImageTooLargeError(ImageDecodeError):
    """The header declares more pixels or samples than the cap allows (nothing was decoded)."""


def max_decoded_bytes(max_pixels: int) -> int:
    """The most bytes one decoded image may take under a pixel cap."""
    return max_pixels * BYTES_PER_PIXEL


def max_file_bytes(max_pixels: int) -> int:
    """The largest image file worth reading under a pixel cap (uncompressed samples + headers)."""
    return max_decoded_bytes(max_pixels) + FILE_OVERHEAD_BYTES


def check_size(width: int, height: int, bands: int, bytes_per_sample: int, max_pixels: int) -> None:
    """Refuse, before decoding, an image whose canvas or samples exceed the cap."""
    pixels = width * height
    if pixels > max_pixels:
        raise ImageTooLargeError(
            f"image is {width} x {height} = {pixels} pixels, over the limit of {max_pixels}"
        )
    decoded = pixels * bands * bytes_per_sample
    if decoded > max_decoded_bytes(max_pixels):
        raise ImageTooLargeError(
            f"image is {width} x {height} x {bands} bands x {bytes_per_sample} bytes = "
            f"{decoded} bytes decoded, over the limit of {max_decoded_bytes(max_pixels)} "
            f"({BYTES_PER_PIXEL} bytes a pixel for {max_pixels} pixels)"
        )


def is_tiff(data: bytes) -> bool:
    """Whether the bytes start with a TIFF or BigTIFF header."""
    return data[:4] in TIFF_MAGIC


def _scale_to_uint8(array: np.ndarray) -> np.ndarray:
    """Stretch one image's values to 0..255 (per image, over all kept bands)."""
    if array.dtype == np.uint8:
        return array
    values = array.astype(np.float32)  # float32: half the memory of float64, ample for 8 bits
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(array.shape, dtype=np.uint8)
    low, high = float(finite.min()), float(finite.max())
    if high <= low:
        return np.zeros(array.shape, dtype=np.uint8)
    values = np.nan_to_num(values, nan=low, posinf=high, neginf=low)
    values -= low
    values *= 255.0 / (high - low)
    values += 0.5
    return np.clip(values, 0, 255).astype(np.uint8)


def bands_last_to_rgb(array: np.ndarray) -> Image.Image:
    """H x W x B array (B >= 1) -> RGB image (first three bands, grey repeated)."""
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


def array_to_rgb(array: np.ndarray) -> Image.Image:
    """H x W, H x W x B or B x H x W array -> RGB image, guessing the band axis.

    Only for arrays of unknown layout: a decoded TIFF knows its axes and does not guess.
    """
    if array.ndim == 3 and array.shape[0] < min(array.shape[1:]) and array.shape[0] <= 16:
        array = np.moveaxis(array, 0, -1)  # band-first (planar) -> band-last
    if array.ndim == 2:
        array = array[..., None]
    return bands_last_to_rgb(array)


def _upright(image: Image.Image, orientation: object) -> Image.Image:
    method = _UPRIGHT.get(orientation) if isinstance(orientation, int) else None
    return image.transpose(method) if method is not None else image


def _decode_tiff(data: bytes, max_pixels: int) -> Image.Image:
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        page = tif.pages[0]
        if not isinstance(page, tifffile.TiffPage) or page.dtype is None:
            raise ImageDecodeError("unsupported TIFF page (no first page or sample type)")
        # shaped: (separate samples, depth, length, width, contiguous samples), from the header.
        planes, depth, height, width, contig = (int(v) for v in page.shaped)
        check_size(width, height, planes * contig * depth, page.dtype.itemsize, max_pixels)
        orientation = page.tags.valueof(_ORIENTATION_TAG)
        array = np.asarray(page.asarray()).reshape(page.shaped)[:, 0]  # first depth slice
    # (planes, H, W, contig) -> H x W x bands: planar and interleaved TIFFs alike, any band count.
    bands_last = np.moveaxis(array, 0, 2).reshape(height, width, planes * contig)
    return _upright(bands_last_to_rgb(bands_last), orientation)


def _decode_pillow(data: bytes, max_pixels: int) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our cap follows
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as exc:
            raise ImageTooLargeError(str(exc)) from exc
    mode = ImageMode.getmode(image.mode)
    check_size(
        image.width, image.height, len(mode.bands), np.dtype(mode.typestr).itemsize, max_pixels
    )
    image.load()
    return _upright(_to_rgb(image), image.getexif().get(_ORIENTATION_TAG))


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return array_to_rgb(np.asarray(image))
    if image.mode in ("RGBA", "LA", "P", "PA"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Bytes -> upright RGB Pillow image, or ImageDecodeError saying why not.

    ImageTooLargeError (a subclass) means the header alone was refused by the cap.
    """
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


def read_image(path: Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode an image file to RGB (a file larger than any image under the cap is refused)."""
    path = Path(path)
    size = path.stat().st_size
    if size > max_file_bytes(max_pixels):
        raise ImageTooLargeError(
            f"{path.name} is {size} bytes, over the {max_file_bytes(max_pixels)} bytes "
            f"any image of at most {max_pixels} pixels needs"
        )
    return decode_image(path.read_bytes(), max_pixels)
