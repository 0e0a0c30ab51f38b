"""Reading indexed images back (thumbnails, files) without reopening their archive every time.

A tar has no index of its members, so opening one costs a scan of the whole archive: readers
are kept open per source (a few, least recently used first out), each behind its own lock
since archive handles are not safe to share between threads.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

from indexer.sources import SourceReader


class SourceCache:
    """Open `SourceReader`s by source; `work_dir` is where `rsir index` unpacked .tar.gz files."""

    def __init__(self, work_dir: Path | None, size: int = 16) -> None:
        self.work_dir = work_dir
        self.size = size
        self._readers: OrderedDict[str, tuple[SourceReader, threading.Lock]] = OrderedDict()
        self._lock = threading.Lock()

    def read(self, source: str, path: str) -> bytes:
        """The bytes of one entry of an indexed source."""
        with self._lock:
            entry = self._readers.get(source)
            if entry is None:
                entry = (SourceReader(Path(source), self.work_dir), threading.Lock())
                self._readers[source] = entry
                while len(self._readers) > self.size:
                    self._readers.popitem(last=False)
            else:
                self._readers.move_to_end(source)
        reader, lock = entry
        with lock:
            return reader.read(path)
