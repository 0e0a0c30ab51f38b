"""Reading archive entries: capped by declared size and while reading, any unreadable entry an
EntryError (never another exception), a .tar.gz read in place without an unpacked copy."""

from __future__ import annotations

import pickle
import tarfile
import tempfile
import zipfile
from pathlib import Path

import pytest

from indexer.sources import (
    EntryError,
    SourceError,
    SourceReader,
    canonical_source,
    list_entries,
    read_entry,
    source_kind,
)
from model.imageio import max_file_bytes
from tests.data.make_bombs import Corpus, make_corpus
from tests.data.make_tiny import Tiny


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, tiny: Tiny) -> Corpus:
    return make_corpus(tmp_path_factory.mktemp("bombs"), tiny.images["stripes"][:3])


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


# ---------------------------------------------------------------- listing and reading, any kind
def layout(root: Path, tiny: Tiny) -> dict[str, bytes]:
    """<class>/<image> files (tiny fixtures), plus what a listing must pass over or set apart."""
    files = {
        f"{cls}/{src.name}": src.read_bytes()
        for cls in ("stripes", "checks")
        for src in tiny.images[cls][:2]
    }
    files["top.jpg"] = tiny.images["stripes"][0].read_bytes()  # no class folder
    files["forest/notes.txt"] = b"not an image"
    files[".hidden/x.jpg"] = b"hidden"
    files["__MACOSX/beach/._a.jpg"] = b"resource fork"
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


def archives(folder: Path, dest: Path) -> list[Path]:
    """The same files as a .zip, a .tar and a .tar.gz."""
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    with zipfile.ZipFile(dest / "s.zip", "w") as zf:
        for name in names:
            zf.write(folder / name, name)
    for suffix, mode in ((".tar", "w"), (".tar.gz", "w:gz")):
        with tarfile.open(dest / f"s{suffix}", mode) as tf:
            for name in names:
                tf.add(folder / name, name)
    return [dest / "s.zip", dest / "s.tar", dest / "s.tar.gz"]


def test_every_kind_lists_the_same_entries_labels_and_bytes(tmp_path: Path, tiny: Tiny) -> None:
    folder = tmp_path / "folder"
    files = layout(folder, tiny)
    images = sorted(n for n in files if n.endswith(".jpg") and not n.startswith((".", "__")))
    for source in [folder, *archives(folder, tmp_path)]:
        listing = list_entries(source)
        assert [e.path for e in listing.entries] == images, source.name
        assert {e.path: e.label for e in listing.entries}["top.jpg"] is None
        assert {e.label for e in listing.entries} == {"stripes", "checks", None}
        assert listing.non_image == ["forest/notes.txt"]
        reader = pickle.loads(pickle.dumps(SourceReader(source)))  # as a DataLoader worker
        reader.read(images[0])  # opens the archive in this copy
        for name in images:
            assert reader.read(name) == files[name], (source.name, name)
        again = pickle.loads(pickle.dumps(reader))  # open handles are not pickled
        assert again.read(images[-1]) == files[images[-1]]
        assert read_entry(str(source), images[1]) == files[images[1]]


def test_source_kinds_and_their_refusals(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    for name in ("a.zip", "a.tar", "a.tar.gz", "a.tgz", "a.TIF", "a.txt"):
        (tmp_path / name).write_bytes(b"")
    kinds = {p.name: source_kind(p) for p in tmp_path.iterdir() if p.suffix != ".txt"}
    assert kinds == {
        "d": "folder", "a.zip": "zip", "a.tar": "tar", "a.tar.gz": "tar.gz", "a.tgz": "tar.gz",
        "a.TIF": "geotiff",
    }  # fmt: skip
    with pytest.raises(SourceError, match="unknown source kind"):
        source_kind(tmp_path / "a.txt")
    with pytest.raises(SourceError, match="does not exist"):
        list_entries(tmp_path / "missing")
    (tmp_path / "link").symlink_to(tmp_path / "d")
    assert canonical_source(tmp_path / "link") == str((tmp_path / "d").resolve())
