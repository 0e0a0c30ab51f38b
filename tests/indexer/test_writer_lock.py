"""The writer lock both vector engines take (indexer/writer_lock.py): one writer, 0644, and a
lock that a dead writer does not keep."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from indexer.writer_lock import LOCK_NAME, WriterLock, acquire_if


def test_a_second_writer_is_refused_until_the_first_releases(tmp_path: Path) -> None:
    first = WriterLock(tmp_path)
    with pytest.raises(RuntimeError, match="another process is writing"):
        WriterLock(tmp_path)
    first.release()
    first.release()  # idempotent
    WriterLock(tmp_path).release()
    assert stat.S_IMODE((tmp_path / LOCK_NAME).stat().st_mode) == 0o644
    assert acquire_if(False, tmp_path) is None


def test_a_killed_writer_leaves_no_lock(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from indexer.writer_lock import WriterLock; "
         f"WriterLock({str(tmp_path)!r}); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    with pytest.raises(RuntimeError):
        WriterLock(tmp_path)
    holder.kill()
    holder.wait()
    WriterLock(tmp_path).release()
