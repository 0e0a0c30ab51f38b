"""Decoding guards and layouts: the pixel/sample cap, planar band order, orientation tags."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tifffile
from PIL import Image

from model.imageio import ImageTooLargeError, decode_image, max_decoded_bytes
from tests.data.make_tiny import pattern

ORIENTATION = 274


def _real(width: int = 256, height: int = 200) -> np.ndarray:
    """A textured non-square RGB picture (a tiny fixture's pattern, enlarged), so that a turn
    shows in the shape and a flip in the pixels."""
    small = Image.fromarray(pattern("dots", 1))
    return np.asarray(small.resize((width, height), Image.Resampling.BICUBIC))


def _tiff(array: np.ndarray, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, **kwargs)  # type: ignore[arg-type]
    return buffer.getvalue()


def test_planar_tiff_over_16_bands_keeps_its_axes() -> None:
    rgb = _real()  # 200 x 256 x 3
    extra = np.zeros((17, *rgb.shape[:2]), dtype=np.uint8)
    planar = np.concatenate([np.moveaxis(rgb, -1, 0), extra])  # 20 x 200 x 256, band-first
    data = _tiff(planar, photometric="minisblack", planarconfig="separate")
    image = decode_image(data)
    assert image.size == (256, 200)  # was read as 256 wide, 20 high
    assert np.array_equal(np.asarray(image), rgb)


def test_interleaved_tiff_of_many_bands_keeps_its_axes() -> None:
    rgb = _real()
    extra = np.zeros((*rgb.shape[:2], 17), dtype=np.uint8)
    data = _tiff(np.concatenate([rgb, extra], -1), photometric="minisblack", planarconfig="contig")
    assert np.array_equal(np.asarray(decode_image(data)), rgb)


def test_band_bomb_is_refused_by_samples_before_decoding() -> None:
    # 300 x 300 pixels pass a 100k-pixel cap; 16 bands of 16 bits are 2.9 MB decoded.
    bands = np.zeros((16, 300, 300), dtype=np.uint16)
    data = _tiff(bands, photometric="minisblack", planarconfig="separate", compression="zlib")
    assert len(data) < 20_000
    with pytest.raises(ImageTooLargeError, match="16 bands x 2 bytes") as refused:
        decode_image(data, max_pixels=100_000)
    assert str(max_decoded_bytes(100_000)) in str(refused.value)
    assert decode_image(data, max_pixels=1_000_000).size == (300, 300)


def test_pixel_cap_message_reports_width_x_height_of_a_planar_tiff() -> None:
    planar = np.zeros((5, 300, 400), dtype=np.uint8)  # 5 bands of 400 x 300
    data = _tiff(planar, photometric="minisblack", planarconfig="separate", compression="zlib")
    with pytest.raises(ImageTooLargeError) as refused:
        decode_image(data, max_pixels=100_000)
    message = str(refused.value)
    assert "400 x 300 = 120000 pixels" in message, message  # not 5 x 300 = 1500


def _jpeg_with_orientation(rgb: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=95, exif=exif)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("orientation", "upright"),
    [
        (3, Image.Transpose.ROTATE_180),
        (6, Image.Transpose.ROTATE_270),
        (8, Image.Transpose.ROTATE_90),
        (2, Image.Transpose.FLIP_LEFT_RIGHT),
    ],
)
def test_exif_orientation_is_applied(orientation: int, upright: Image.Transpose) -> None:
    rgb = _real()
    stored = np.asarray(decode_image(_jpeg_with_orientation(rgb, 1)))
    image = decode_image(_jpeg_with_orientation(rgb, orientation))
    expected = np.asarray(Image.fromarray(stored).transpose(upright))
    assert image.size == (expected.shape[1], expected.shape[0])
    assert np.array_equal(np.asarray(image), expected)


def test_orientation_6_jpeg_is_turned_upright() -> None:
    """A camera stores a portrait photo as landscape pixels + orientation 6 (turn 90 clockwise)."""
    rgb = _real(256, 200)  # stored 256 wide x 200 high
    image = decode_image(_jpeg_with_orientation(rgb, 6))
    assert image.size == (200, 256)


def test_png_and_tiff_orientation_tags_are_applied() -> None:
    rgb = _real()
    png = io.BytesIO()
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    Image.fromarray(rgb).save(png, format="PNG", exif=exif)
    expected = np.asarray(Image.fromarray(rgb).transpose(Image.Transpose.ROTATE_270))
    assert np.array_equal(np.asarray(decode_image(png.getvalue())), expected)
    tiff = _tiff(rgb, photometric="rgb", extratags=[(ORIENTATION, "H", 1, 6, True)])
    assert np.array_equal(np.asarray(decode_image(tiff)), expected)
