"""Sources of images: a folder, a .zip, a .tar / .tar.gz, or a GeoTIFF scene cut into tiles.

A source lists entries (inner path + label from the layout) cheaply; each entry's bytes are
read later, on a DataLoader worker, so listing a million files costs no decoding.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image

from indexer.scenes import SceneTiles, TileOptions, scene_tile_names
from model.datasets import IMAGE_EXTENSIONS


class SourceError(ValueError):
    """The source cannot be read at all (missing, unknown kind)."""


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

    A .tar.gz is first decompressed to a plain .tar beside `work_dir`, since gzip has no random
    access and workers read entries out of order.
    """

    def __init__(
        self, source: Path, work_dir: Path | None = None, tiles: TileOptions | None = None
    ) -> None:
        self.source = Path(source)
        self.kind = source_kind(self.source)
        self.work_dir = work_dir
        self._zip: zipfile.ZipFile | None = None
        self._tar: tarfile.TarFile | None = None
        self._tar_members: dict[str, tarfile.TarInfo] | None = None
        self._scene = SceneTiles(self.source, tiles) if self.kind == "geotiff" else None
        self._tar_path = self._plain_tar() if self.kind == "tar.gz" else self.source

    def _plain_tar(self) -> Path:
        # Not beside the source: archives often sit on read-only mounts.
        base = self.work_dir or Path(tempfile.gettempdir()) / "rsir-untar"
        digest = hashlib.sha256(canonical_source(self.source).encode()).hexdigest()[:12]
        target = base / f".untar-{digest}.tar"
        if not target.exists() or target.stat().st_mtime < self.source.stat().st_mtime:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(".tmp")
            with gzip.open(self.source, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, length=1 << 20)
            tmp.replace(target)
        return target

    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        state.update(_zip=None, _tar=None, _tar_members=None)
        return state

    def read(self, inner: str) -> bytes:
        """The raw bytes of one entry (a PNG for a GeoTIFF tile)."""
        if self.kind == "folder":
            target = (self.source / inner).resolve()
            if not target.is_relative_to(self.source.resolve()):
                raise SourceError(f"{inner} is outside {self.source}")
            return target.read_bytes()
        if self.kind == "zip":
            if self._zip is None:
                self._zip = zipfile.ZipFile(self.source)
            return self._zip.read(inner)
        if self.kind in ("tar", "tar.gz"):
            if self._tar is None:
                self._tar = tarfile.open(self._tar_path)  # noqa: SIM115 (held open per worker)
                self._tar_members = {m.name: m for m in self._tar.getmembers() if m.isfile()}
            assert self._tar_members is not None
            handle = self._tar.extractfile(self._tar_members[inner])
            if handle is None:
                raise SourceError(f"{inner} is not a regular file")
            return handle.read()
        assert self._scene is not None
        return self._scene.read(inner)  # a window of the scene, as PNG (TileSkipped if empty)

    def scene_image(self, inner: str) -> Image.Image | None:
        """A scene tile as RGB pixels (indexing needs no PNG); None for other sources."""
        return self._scene.image(inner) if self._scene is not None else None

    def geo_columns(self, inner: str) -> dict[str, Any]:
        """A scene tile's pixel window, CRS and footprint (DB columns); nothing for images."""
        return self._scene.geo_columns(inner) if self._scene is not None else {}


def read_entry(source: str, path: str) -> bytes:
    """Bytes of an indexed image, from its source and inner path (as stored in the DB)."""
    return SourceReader(Path(source)).read(path)
