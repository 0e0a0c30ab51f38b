"""API key checks and server-side path confinement.

Paths named in requests (data roots, sources to index) must resolve, symlinks followed, inside
the configured data root; the service never fetches a URL.
"""

from __future__ import annotations

import errno
import hmac
import ipaddress
import os
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


def check_internal_exposure(key: str | None, host: str) -> None:
    """The worker's internal API deletes images: without a key it may listen on loopback only."""
    if key is not None:
        return
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: cannot tell, so refuse
        loopback = False
    if not loopback:
        raise ValueError(
            f"the worker's internal API would listen on {host} without a key: set RSIR_API_KEY "
            "(the API sends it) or bind RSIR_WORKER_HOST to 127.0.0.1"
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
    """`path` (relative paths are taken from `root`) resolved, or 403 if it leaves `root`.

    What the OS cannot take (a NUL byte, an unknown `~user`, a name over the system's limit, a
    symlink loop) is a 422 naming the problem, never an exception from the OS.
    """
    text = str(path)
    if "://" in text:
        raise ForbiddenPathError("URLs are not fetched: give a path inside the data root")
    shown = text if len(text) <= 80 else text[:77] + "..."
    if "\x00" in text:
        raise ServiceError(f"path {shown!r} contains a NUL byte", 422)
    base = Path(root).resolve()
    try:
        candidate = Path(text).expanduser()
    except RuntimeError as exc:  # `~user` of no known user
        raise ServiceError(f"path {shown!r}: cannot expand the home folder ({exc})", 422) from None
    try:
        resolved = (candidate if candidate.is_absolute() else base / candidate).resolve()
        if not resolved.is_relative_to(base):
            raise ForbiddenPathError(f"path {shown!r} is outside the data root")
        exists = resolved.exists()
    except RuntimeError:  # Python 3.11's resolve() on a symlink loop
        raise ServiceError(f"path {shown!r} is a symlink loop", 422) from None
    except OSError as exc:
        raise ServiceError(f"path {shown!r}: {_os_reason(exc)}", 422) from None
    if not exists:
        raise ServiceError(f"path {shown!r} does not exist in the data root", 404)
    return resolved


def _os_reason(exc: OSError) -> str:
    """A one-line reason for an OS refusal, without the server path the exception carries."""
    if exc.errno == errno.ELOOP:
        return "symlink loop"
    if exc.errno == errno.ENAMETOOLONG:
        return "name too long"
    return os.strerror(exc.errno) if exc.errno else type(exc).__name__


def public_path(path: str, root: Path) -> str:
    """A server path as public answers show it: relative to `root` (the data root), or only
    its last part when it lies elsewhere, so no answer tells the server's layout."""
    if not path:
        return path
    candidate = Path(path)
    if not candidate.is_absolute():
        return path
    try:
        return candidate.relative_to(Path(root).resolve()).as_posix() or "."
    except ValueError:
        return candidate.name


def public_problem(text: str, data_root: Path, paths: list[Path | str]) -> str:
    """A problem as public answers show it (/ready, /health, 503 details): each server file or
    folder of `paths` that it names by its public path (`public_path`), then one line as
    `public_text` makes it. The log keeps the full text."""
    forms: dict[str, str] = {}
    for path in paths:
        shown = public_path(str(Path(path).resolve()), data_root)
        for form in (str(Path(path).resolve()), str(path)):
            if form not in ("", "."):
                forms.setdefault(form, shown)
    for form in sorted(forms, key=len, reverse=True):  # a folder after the files inside it
        text = text.replace(form, forms[form])
    return public_text(text, [data_root]) or ""


def public_text(text: str | None, roots: list[Path]) -> str | None:
    """A one-line reason for clients: the first line, with server folders made relative.
    (Tracebacks stay in the log.)"""
    if not text:
        return text
    line = text.strip().splitlines()[0] if text.strip() else ""
    for root in roots:
        for prefix in {str(Path(root).resolve()), str(root)}:
            line = line.replace(prefix.rstrip("/") + "/", "").replace(prefix, ".")
    return line
