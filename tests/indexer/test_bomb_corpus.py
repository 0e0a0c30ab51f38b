"""The bomb corpus (tests/data/make_bombs.py) through indexing, the upload check and the
service's source reader: every bomb is refused or skipped and counted, and the process's peak
memory and disk use stay under stated bounds while the corpus declares over 4 GiB.

The work runs in a subprocess that reports its own peak RSS (VmHWM), reset after a warm-up (so
torch and the model are not counted), and its DataLoader workers' (RUSAGE_CHILDREN), against a
control run over the same real images in the same four kinds of source without the bombs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, ucm_files
from tests.data.make_bombs import GIB, Corpus, make_corpus

MEMORY_BOUND_MIB = 256  # peak RSS growth over the baseline, the process and its workers alike
DISK_BOUND_MIB = 16  # everything written to the index folder and the temporary folder
SOURCES = ["images", "bomb.zip", "bomb.tar.gz", "bomb.tar"]

RUNNER = r"""
import json, resource, sys
from pathlib import Path

from indexer.options import IndexOptions
from indexer.pipeline import index_source
from indexer.sources import EntryError
from service.errors import PayloadTooLargeError
from service.sources import SourceCache
from service.uploads import check_and_decode

args = json.loads(sys.argv[1])
corpus, index_dir, ckpt = Path(args["corpus"]), Path(args["index_dir"]), Path(args["ckpt"])

def peaks():
    # VmHWM: this process's peak RSS since the reset below (ru_maxrss keeps exited threads'
    # earlier peaks); RUSAGE_CHILDREN: the largest peak of its finished DataLoader workers.
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    own = int(status["VmHWM"].split()[0])
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"self_kib": own, "children_kib": workers}

def index(source, where):
    options = IndexOptions(index_dir=where, num_workers=1, batch_size=4, device="cpu")
    return index_source(source, ckpt, options).to_dict()

# Warm up (torch, the model, a DataLoader worker), then start the peak from the current RSS.
index(Path(args["warmup"]), Path(args["index_dir"]) / "warmup")
with open("/proc/self/clear_refs", "w") as clear:
    clear.write("5")  # Linux: reset this process's peak RSS (VmHWM, ru_maxrss) to its RSS now
out = {"summaries": {}, "uploads": {}, "reads": {}, "start": peaks()}
for name in args["sources"]:
    out["summaries"][name] = index(corpus / name, index_dir)
for path in args["image_bombs"]:
    try:
        check_and_decode(Path(path).read_bytes(), args["max_pixels"])
        out["uploads"][path] = "accepted"
    except PayloadTooLargeError as exc:
        out["uploads"][path] = f"{exc.status_code}: {exc}"
cache = SourceCache(args["max_pixels"])
for name, inner in args["archive_bombs"]:
    try:
        cache.read(str(corpus / name), inner)
        out["reads"][f"{name}:{inner}"] = "read"
    except EntryError as exc:
        out["reads"][f"{name}:{inner}"] = f"refused: {exc}"
out["peak"] = peaks()
print("RESULT " + json.dumps(out))
"""


def _disk_bytes(folder: Path) -> int:
    """Bytes really allocated under a folder (sparse files count what they hold)."""
    return sum(p.lstat().st_blocks * 512 for p in folder.rglob("*") if p.is_file())


def _clean_corpus(dest: Path, corpus: Corpus) -> None:
    """The corpus's good images alone, in the same four kinds of source: the control run."""
    images = dest / "images" / "c"
    images.mkdir(parents=True)
    for name in corpus.good["images"]:
        (images.parent / name).write_bytes((corpus.root / "images" / name).read_bytes())
    with zipfile.ZipFile(dest / "bomb.zip", "w") as archive:
        for name in corpus.good["bomb.zip"]:
            archive.write(images.parent / name, name)
    for kind, mode in (("bomb.tar.gz", "w:gz"), ("bomb.tar", "w")):
        with tarfile.open(dest / kind, mode) as archive:  # type: ignore[call-overload]
            for name in corpus.good[kind]:
                archive.add(images.parent / name, name)


def _run(root: Path, work: Path, checkpoint: Path, corpus: Corpus, bombs: bool) -> dict[str, Any]:
    """Index the four sources of `root` in a fresh process; its figures and peak memory."""
    temp = work / "tmp"
    temp.mkdir(parents=True)
    args = {
        "corpus": str(root),
        "index_dir": str(work / "index"),
        "ckpt": str(checkpoint),
        "warmup": str(root / "images"),
        "sources": SOURCES,
        "image_bombs": [str(p) for p in corpus.image_bombs] if bombs else [],
        "archive_bombs": [[n, b] for n in SOURCES[1:] for b in corpus.bombs[n]] if bombs else [],
        "max_pixels": 40_000_000,  # the default cap
    }
    env = {**os.environ, "TMPDIR": str(temp), "PYTHONPATH": str(REPO)}
    env.pop("RSIR_MAX_PIXELS", None)
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, json.dumps(args)],
        env=env, capture_output=True, text=True, timeout=600, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    result: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
    result["disk_mib"] = (_disk_bytes(work / "index") + _disk_bytes(temp)) / (1 << 20)
    return result


@pytest.mark.slow
def test_bomb_corpus_is_refused_or_skipped_within_memory_and_disk_bounds(
    tmp_path: Path, other_checkpoint: Path
) -> None:
    corpus = make_corpus(tmp_path / "corpus", ucm_files("beach", 3))
    assert corpus.declared_bytes > 4 * GIB
    _clean_corpus(tmp_path / "clean", corpus)
    control = _run(tmp_path / "clean", tmp_path / "control", other_checkpoint, corpus, False)
    result = _run(corpus.root, tmp_path / "bombs", other_checkpoint, corpus, True)

    for name in SOURCES:
        assert control["summaries"][name]["added"] == len(corpus.good[name])
        summary = result["summaries"][name]
        assert summary["added"] == len(corpus.good[name]), (name, summary)
        assert summary["corrupt"] == len(corpus.bombs[name]), (name, summary)
        assert {path for path, _ in summary["failed"]} == set(corpus.bombs[name]), summary
    assert len(result["uploads"]) == 2 and len(result["reads"]) == 5
    for path, answer in result["uploads"].items():
        assert answer.startswith("413: "), (path, answer)
    for entry, answer in result["reads"].items():
        assert answer.startswith("refused: "), (entry, answer)

    # The process: its peak over its own RSS after the warm-up. Its workers (their peaks
    # include the parent's pages at fork): over the control's workers.
    growth = {
        "self": (result["peak"]["self_kib"] - result["start"]["self_kib"]) / 1024,
        "workers": (result["peak"]["children_kib"] - control["peak"]["children_kib"]) / 1024,
    }
    print(
        f"peak RSS (KiB): control {control['start']} -> {control['peak']}, "
        f"corpus {result['start']} -> {result['peak']}; growth (MiB) {growth}; "
        f"disk written (MiB) {result['disk_mib']:.2f}"
    )
    assert max(growth.values()) < MEMORY_BOUND_MIB, growth
    assert result["disk_mib"] < DISK_BOUND_MIB, result["disk_mib"]
