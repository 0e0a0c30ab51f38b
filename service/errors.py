"""Errors the service turns into JSON `{"detail": ...}` with their HTTP status.

Raised by the inference core and the worker client alike, so that in-process and separate
worker deployments answer the same status for the same failure.
"""

from __future__ import annotations

from indexer.area import AreaError, BBox
from indexer.feedback import Feedback


class ServiceError(Exception):
    """An error with the HTTP status it maps to."""

    status_code = 500

    def __init__(self, detail: str, status_code: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if status_code is not None:
            self.status_code = status_code


class NotFoundError(ServiceError):
    """Unknown id (image, job)."""

    status_code = 404


class UnknownModelError(ServiceError):
    """A model name that is not loaded; the message lists the loaded ones."""

    status_code = 404


class NotReadyError(ServiceError):
    """Model, index or DB not loaded (yet, or misconfigured); the message says which."""

    status_code = 503


class ModelMismatchServiceError(ServiceError):
    """The index was made by another model than the configured checkpoint."""

    status_code = 409


class PayloadTooLargeError(ServiceError):
    """Upload over the byte cap, or an image over the pixel cap (decompression bomb)."""

    status_code = 413


class UnsupportedMediaError(ServiceError):
    """The uploaded bytes are not an image (sniffed, not taken from the declared type)."""

    status_code = 415


class ForbiddenPathError(ServiceError):
    """A server-side path that resolves outside the data root."""

    status_code = 403


def parse_feedback(relevant: str | None, not_relevant: str | None) -> Feedback:
    """Relevance-feedback id lists ("3,17") or a 422 saying what is wrong with them."""
    try:
        return Feedback.parse(relevant, not_relevant)
    except ValueError as exc:
        raise ServiceError(str(exc), 422) from None


def parse_area(text: str | None) -> BBox | None:
    """A `bbox` parameter (west,south,east,north) or a 422 saying what is wrong with it."""
    if not text:
        return None
    try:
        return BBox.parse(text)
    except AreaError as exc:
        raise ServiceError(str(exc), 422) from None
