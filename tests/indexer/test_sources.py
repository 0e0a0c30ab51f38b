"""Reading archive entries: capped by declared size and while reading, any unreadable entry an
EntryError (never another exception), a .tar.gz read in place without an unpacked copy."""

from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path

import pytest

from indexer.sources import EntryError, SourceReader, list_entries
from model.imageio import max_file_bytes
from tests.conftest import ucm_files
from tests.data.make_bombs import Corpus, make_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return make_corpus(tmp_path_factory.mktemp("bombs"), ucm_files("beach", 3))


def test_zip_entry_over_the_cap_is_refused_by_its_declared_size(corpus: Corpus) -> None:
    reader = SourceReader(corpus.root / "bomb.zip")
    assert reader.max_entry_bytes == max_file_bytes(40_000_000)
    with pytest.raises(EntryError, match=r"1073741824 bytes, over the .* bomb guard"):
        reader.read("c/bomb.png")
    good = corpus.good["bomb.zip"][0]
    assert reader.read(good) == (corpus.root / "images" / good).read_bytes()


@pytest.mark.parametrize(
    ("entry", "reason"), [("c/bad-crc.jpg", "BadZipFile"), ("c/encrypted.jpg", "encrypted")]
)
def test_unreadable_zip_entries_raise_entry_errors(corpus: Corpus, entry: str, reason: str) -> None:
    reader = SourceReader(corpus.root / "bomb.zip")
    with pytest.raises(EntryError, match=reason):
        reader.read(entry)
    assert reader.read(corpus.good["bomb.zip"][1])  # the archive stays readable after it


def test_entry_that_inflates_past_its_declared_size_stops_at_the_cap(tmp_path: Path) -> None:
    archive = tmp_path / "small.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("c/zeros.png", bytes(3 << 20))
    reader = SourceReader(archive, max_entry_bytes=1 << 20)
    with pytest.raises(EntryError, match="bomb guard"):
        reader.read("c/zeros.png")


@pytest.mark.parametrize("kind", ["bomb.tar", "bomb.tar.gz"])
def test_tar_members_are_read_in_place_and_capped(
    corpus: Corpus, kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    tempfile.tempdir = None  # let tempfile see TMPDIR
    try:
        listing = list_entries(corpus.root / kind)
        assert [e.path for e in listing.entries] == sorted(corpus.good[kind] + corpus.bombs[kind])
        reader = SourceReader(corpus.root / kind)
        for name in corpus.good[kind]:
            assert reader.read(name) == (corpus.root / "images" / name).read_bytes()
        with pytest.raises(EntryError, match="bomb guard"):
            reader.read("c/bomb.png")
        with pytest.raises(EntryError, match="not in"):
            reader.read("c/missing.jpg")
    finally:
        tempfile.tempdir = None
    assert list(tmp_path.iterdir()) == []  # nothing unpacked anywhere


def test_folder_file_over_the_cap_is_not_read(corpus: Corpus) -> None:
    reader = SourceReader(corpus.root / "images")
    with pytest.raises(EntryError, match="bomb guard"):
        reader.read("c/huge.jpg")
    with pytest.raises(EntryError, match="outside"):
        reader.read("../bomb.zip")
