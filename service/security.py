"""API key checks and server-side path confinement.

Paths named in requests (data roots, sources to index) must resolve, symlinks followed, inside
the configured data root; the service never fetches a URL.
"""

from __future__ import annotations

import hmac
from pathlib import Path

from service.errors import ForbiddenPathError, ServiceError

# Keys that mean someone copied an example: refused at start, like any default secret.
PLACEHOLDER_KEYS = frozenset(
    {"changeme", "change-me", "changethis", "secret", "password", "apikey"}
)
MIN_KEY_LENGTH = 12


def validate_api_key_setting(key: str | None) -> None:
    """Refuse placeholder or short keys at start-up (None means write endpoints are disabled)."""
    if key is None:
        return
    if key.lower() in PLACEHOLDER_KEYS or len(key) < MIN_KEY_LENGTH:
        raise ValueError(
            f"RSIR_API_KEY must be a real secret of at least {MIN_KEY_LENGTH} characters "
            "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(24))'`)"
        )


def check_api_key(configured: str | None, given: str | None) -> None:
    """401 without a key, 403 with a wrong one, 403 when no key is configured at all."""
    if configured is None:
        raise ServiceError(
            "write endpoints are disabled: no API key is configured (set RSIR_API_KEY)", 403
        )
    if not given:
        raise ServiceError("missing API key: send it in the X-API-Key header", 401)
    if not hmac.compare_digest(given.encode(), configured.encode()):
        raise ServiceError("wrong API key", 403)


def resolve_inside(path: str | Path, root: Path) -> Path:
    """`path` (relative paths are taken from `root`) resolved, or 403 if it leaves `root`."""
    text = str(path)
    if "://" in text:
        raise ForbiddenPathError("URLs are not fetched: give a path inside the data root")
    base = Path(root).resolve()
    candidate = Path(text).expanduser()
    resolved = (candidate if candidate.is_absolute() else base / candidate).resolve()
    if not resolved.is_relative_to(base):
        raise ForbiddenPathError(f"path {text!r} is outside the data root")
    if not resolved.exists():
        raise ServiceError(f"path {text!r} does not exist in the data root", 404)
    return resolved
