"""Reading indexed images back (thumbnails, files) without reopening their archive every time.

A tar has no index of its members, so opening one costs a scan of the whole archive: readers
are kept open per source (a few, least recently used first out), each behind its own lock
since archive handles are not safe to share between threads. The cache's own lock is held only
to find or store a reader, never while one is made or read; that first read,
a .tar.gz's header scan included, runs under its source's lock alone, so a slow archive never
holds up another source. Nothing is ever unpacked: reads are capped like the indexer's.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

from indexer.sources import SourceReader
from model.imageio import max_file_bytes


class SourceCache:
    """Open `SourceReader`s by source, reading entries of at most `max_file_bytes(max_pixels)`."""

    def __init__(self, max_pixels: int, size: int = 16) -> None:
        self.max_entry_bytes = max_file_bytes(max_pixels)
        self.size = size
        self._readers: OrderedDict[str, tuple[SourceReader, threading.Lock]] = OrderedDict()
        self._lock = threading.Lock()

    def read(self, source: str, path: str) -> bytes:
        """The bytes of one entry of an indexed source."""
        with self._lock:
            entry = self._readers.get(source)
            if entry is not None:
                self._readers.move_to_end(source)
        if entry is None:
            made = (
                SourceReader(Path(source), max_entry_bytes=self.max_entry_bytes),
                threading.Lock(),
            )
            with self._lock:
                entry = self._readers.setdefault(source, made)
                while len(self._readers) > self.size:
                    self._readers.popitem(last=False)
        reader, lock = entry
        with lock:
            return reader.read(path)
