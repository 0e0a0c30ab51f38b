"""The one-writer rule of an index folder, for every vector engine.

Why: an index (FAISS segments or a Milvus collection) and its DB rows stay in agreement only if
one process writes at a time. A writer holds an exclusive, non-blocking `flock` on
`<index_dir>/.write.lock` for as long as it is open; a second writer is refused at once instead
of waiting, and the kernel releases the lock when a writer dies (kill -9 included), so a crash
never leaves the index locked. The file is created 0644: it holds nothing to run.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_NAME = ".write.lock"


class WriterLock:
    """The held writer lock of one index folder; `release()` (idempotent) gives it back."""

    def __init__(self, index_dir: Path) -> None:
        fd = os.open(Path(index_dir) / LOCK_NAME, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RuntimeError(f"another process is writing to {index_dir}") from None
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def acquire_if(writable: bool, index_dir: Path) -> WriterLock | None:
    """The writer lock when opening for writing, else None (readers take no lock)."""
    return WriterLock(index_dir) if writable else None
