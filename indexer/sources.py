"""Sources of images: a folder, a .zip, a .tar / .tar.gz, or a GeoTIFF scene cut into tiles.

A source lists entries (inner path + label from the layout) cheaply; each entry's bytes are
read later, on a DataLoader worker, so listing a million files costs no decoding.

Archives are read where they are, never unpacked: an entry's declared size is checked against
`max_entry_bytes` before a byte of it is read, and the read itself stops there, so an archive
bomb costs neither memory nor disk. A .tar.gz is read through a gzip seek-point index
(indexed_gzip) built in memory while its headers are scanned once per reader.
"""

from __future__ import annotations

import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

import indexed_gzip
from PIL import Image

from indexer.scenes import SceneTiles, TileOptions, scene_tile_names
from model.datasets import IMAGE_EXTENSIONS
from model.imageio import max_file_bytes
from rsir_common.settings import MAX_PIXELS

# Uncompressed bytes between two seek points of a .tar.gz: each point keeps a 32 KiB window, so
# the index takes 0.4 % of the unpacked size in memory, and one read inflates at most 8 MiB
# more than the entry.
GZIP_SEEK_SPACING = 8 << 20


class SourceError(ValueError):
    """The source cannot be read at all (missing, unknown kind)."""


class EntryError(SourceError):
    """One entry cannot be read (too large, encrypted, corrupt): skip it, count it, go on."""


@dataclass(frozen=True)
class Entry:
    """One candidate image inside a source."""

    path: str  # inner path, forward slashes
    label: str | None


def source_kind(source: Path) -> str:
    """'folder', 'zip', 'tar', 'tar.gz' or 'geotiff' (a single scene cut into tiles)."""
    name = source.name.lower()
    if source.is_dir():
        return "folder"
    if not source.is_file():
        raise SourceError(f"source {source} does not exist")
    if name.endswith((".tar.gz", ".tgz")):
        return "tar.gz"
    if name.endswith(".tar"):
        return "tar"
    if name.endswith(".zip"):
        return "zip"
    if name.endswith((".tif", ".tiff")):
        return "geotiff"
    raise SourceError(f"unknown source kind for {source}: use a folder, .zip, .tar(.gz) or .tif")


def canonical_source(source: Path | str) -> str:
    """The absolute, symlink-resolved path that identifies a source in the DB."""
    return str(Path(source).resolve())


def label_from_path(inner: str) -> str | None:
    """The class folder of a <class>/<image> layout: the image's parent folder, if any."""
    parts = PurePosixPath(inner).parts
    return parts[-2] if len(parts) >= 2 else None


def _hidden(inner: str) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in PurePosixPath(inner).parts)


def _is_image_name(inner: str) -> bool:
    return PurePosixPath(inner).suffix.lower() in IMAGE_EXTENSIONS


@dataclass
class Listing:
    """Image entries of a source, and how many other files were passed over."""

    entries: list[Entry]
    non_image: list[str]


def list_entries(source: Path, tiles: TileOptions | None = None) -> Listing:
    """All image entries of a source in a stable order; non-image files are listed apart.

    A scene's entries are its tiles, cut as `tiles` says (indexer/scenes.py).
    """
    kind = source_kind(source)
    names: list[str]
    if kind == "folder":
        names = sorted(p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file())
    elif kind == "zip":
        with zipfile.ZipFile(source) as archive:
            names = sorted(i.filename for i in archive.infolist() if not i.is_dir())
    elif kind in ("tar", "tar.gz"):
        with tarfile.open(source) as archive:
            names = sorted(m.name for m in archive.getmembers() if m.isfile())
    else:
        return Listing([Entry(t, None) for t in scene_tile_names(source, tiles)], [])
    names = [n for n in names if not _hidden(n)]
    entries = [Entry(n, label_from_path(n)) for n in names if _is_image_name(n)]
    non_image = [n for n in names if not _is_image_name(n)]
    return Listing(entries, non_image)


class SourceReader:
    """Reads entry bytes; opens archives lazily so that each DataLoader worker has its own handle.

    Every read is capped at `max_entry_bytes` (by default the largest file an image within the
    pixel cap needs), checked on the declared size first and again while reading.
    """

    def __init__(
        self,
        source: Path,
        tiles: TileOptions | None = None,
        *,
        max_entry_bytes: int = max_file_bytes(MAX_PIXELS),
    ) -> None:
        self.source = Path(source)
        self.kind = source_kind(self.source)
        self.max_entry_bytes = max_entry_bytes
        self._zip: zipfile.ZipFile | None = None
        self._tar: tarfile.TarFile | None = None
        self._tar_members: dict[str, tarfile.TarInfo] | None = None
        self._scene = SceneTiles(self.source, tiles) if self.kind == "geotiff" else None

    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        state.update(_zip=None, _tar=None, _tar_members=None)
        return state

    def read(self, inner: str) -> bytes:
        """The raw bytes of one entry (a PNG for a GeoTIFF tile); EntryError when unreadable."""
        if self.kind == "geotiff":
            assert self._scene is not None
            return self._scene.read(inner)  # a window of the scene, as PNG (TileSkipped if empty)
        try:
            if self.kind == "folder":
                return self._read_file(inner)
            if self.kind == "zip":
                return self._read_zip(inner)
            return self._read_tar(inner)
        except EntryError:
            raise
        except KeyError:
            raise EntryError(f"{inner} is not in {self.source.name}") from None
        except Exception as exc:  # bad CRC, encrypted, unknown method, truncated: any of them
            raise EntryError(f"cannot read {inner}: {type(exc).__name__}: {exc}") from exc

    def _check_size(self, inner: str, size: int) -> None:
        if size > self.max_entry_bytes:
            raise EntryError(
                f"{inner} is {size} bytes, over the {self.max_entry_bytes} bytes any image "
                f"within the pixel cap needs (archive bomb guard)"
            )

    def _read_capped(self, inner: str, handle: IO[bytes]) -> bytes:
        data = handle.read(self.max_entry_bytes + 1)
        self._check_size(inner, len(data))  # a size the header understated
        return data

    def _read_file(self, inner: str) -> bytes:
        target = (self.source / inner).resolve()
        if not target.is_relative_to(self.source.resolve()):
            raise EntryError(f"{inner} is outside {self.source}")
        self._check_size(inner, target.stat().st_size)
        with target.open("rb") as handle:
            return self._read_capped(inner, handle)

    def _read_zip(self, inner: str) -> bytes:
        if self._zip is None:
            self._zip = zipfile.ZipFile(self.source)
        info = self._zip.getinfo(inner)
        self._check_size(inner, info.file_size)
        with self._zip.open(info) as handle:
            data = self._read_capped(inner, handle)
            handle.read(1)  # at the end of the entry: zipfile checks the CRC here
        return data

    def _read_tar(self, inner: str) -> bytes:
        if self._tar is None:
            self._tar = self._open_tar()
            self._tar_members = {m.name: m for m in self._tar.getmembers() if m.isfile()}
        assert self._tar_members is not None
        member = self._tar_members[inner]
        self._check_size(inner, member.size)
        handle = self._tar.extractfile(member)
        if handle is None:
            raise EntryError(f"{inner} is not a regular file")
        return self._read_capped(inner, handle)

    def _open_tar(self) -> tarfile.TarFile:
        if self.kind == "tar":
            return tarfile.open(self.source)
        # gzip has no random access: a seek-point index gives it, in memory, without unpacking.
        stream = indexed_gzip.IndexedGzipFile(str(self.source), spacing=GZIP_SEEK_SPACING)
        return tarfile.open(fileobj=stream, mode="r:")

    def scene_image(self, inner: str) -> Image.Image | None:
        """A scene tile as RGB pixels (indexing needs no PNG); None for other sources."""
        return self._scene.image(inner) if self._scene is not None else None

    def geo_columns(self, inner: str) -> dict[str, Any]:
        """A scene tile's pixel window, CRS and footprint (DB columns); nothing for images."""
        return self._scene.geo_columns(inner) if self._scene is not None else {}


def read_entry(source: str, path: str, max_pixels: int = MAX_PIXELS) -> bytes:
    """Bytes of an indexed image, from its source and inner path (as stored in the DB)."""
    return SourceReader(Path(source), max_entry_bytes=max_file_bytes(max_pixels)).read(path)
