"""Checking uploaded images: byte cap, content sniffing, pixel and sample cap, then decoding.

The declared content type and file name are ignored: only the bytes decide. Pixels and samples
(width x height x bands x bytes per sample) are checked from the header before any pixel is
decoded (model/imageio.py), so a decompression bomb costs nothing.
"""

from __future__ import annotations

from fastapi import UploadFile
from PIL import Image

from model.imageio import ImageDecodeError, ImageTooLargeError, decode_image
from service.errors import PayloadTooLargeError, ServiceError, UnsupportedMediaError

CHUNK = 1 << 20

# Leading bytes of the formats rsir decodes.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
    (b"II+\x00", "image/tiff"),
    (b"MM\x00+", "image/tiff"),
)


def sniff_image_type(data: bytes) -> str | None:
    """The image MIME type the bytes start with, or None when they are not an image we read."""
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


async def read_upload(upload: UploadFile, max_bytes: int) -> bytes:
    """All bytes of an upload, refusing (413) as soon as they pass `max_bytes`."""
    parts: list[bytes] = []
    total = 0
    while chunk := await upload.read(CHUNK):
        total += len(chunk)
        if total > max_bytes:
            raise PayloadTooLargeError(f"upload is larger than the limit of {max_bytes} bytes")
        parts.append(chunk)
    return b"".join(parts)


def check_and_decode(data: bytes, max_pixels: int) -> Image.Image:
    """Bytes -> RGB image, or 415 (not an image), 413 (over the pixel/sample cap), 422 (corrupt)."""
    if not data:
        raise UnsupportedMediaError("empty upload: expected an image")
    if sniff_image_type(data) is None:
        raise UnsupportedMediaError(
            "the upload is not an image (JPEG, PNG, TIFF, GIF, BMP or WebP expected)"
        )
    try:
        return decode_image(data, max_pixels)
    except ImageTooLargeError as exc:
        raise PayloadTooLargeError(f"{exc} (decompression bomb guard)") from None
    except ImageDecodeError as exc:
        raise ServiceError(f"cannot decode the image: {exc}", 422) from None
