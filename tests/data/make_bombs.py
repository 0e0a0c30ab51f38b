"""Write the bomb corpus: small files that declare or inflate to gigabytes, beside real images.

Nothing here is committed as data: the corpus is generated into a temporary folder by the test
(tests/indexer/test_bomb_corpus.py) or by hand, `python tests/data/make_bombs.py DEST`. Every
bomb is a few KiB to a few MiB on disk (the .tar is sparse) and costs seconds to write, since
compressed zero blocks are written once and repeated instead of compressing gigabytes.

| file | bomb | declared / unpacked |
| --- | --- | --- |
| images/decompression.png | 20,000 x 20,000 1-bit PNG (decompression bomb) | 400 Mpx |
| images/bands.tif | 16 planar bands of 16 bits at 2,560 x 2,560 (band bomb) | 210 MB of samples |
| images/huge.jpg | a sparse file with an image's name | 1 GiB |
| bomb.zip | one deflated entry of zeros (zip bomb); a bad CRC; an encrypted entry | 1 GiB |
| bomb.tar.gz | one member of zeros in concatenated gzip members (gzip bomb) | 1 GiB |
| bomb.tar | one member of zeros, stored as a hole of a sparse file (tar bomb) | 1 GiB |
"""

from __future__ import annotations

import io
import struct
import sys
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

GIB = 1 << 30
_CHUNK = 1 << 20


@dataclass
class Corpus:
    """Where each source is, and what indexing it must add (good) and skip (bombs)."""

    root: Path
    good: dict[str, list[str]] = field(default_factory=dict)  # source name -> good entries
    bombs: dict[str, list[str]] = field(default_factory=dict)  # source name -> bomb entries
    image_bombs: list[Path] = field(default_factory=list)  # for the upload path
    declared_bytes: int = 0  # bytes the bombs claim or unpack to, all together


def _zero_deflate(size: int) -> tuple[bytes, int]:
    """A raw deflate stream of `size` zero bytes (size a multiple of 1 MiB), and its CRC-32."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(bytes(_CHUNK)) + compressor.flush(zlib.Z_FULL_FLUSH)
    zeros = bytes(_CHUNK)
    crc = 0
    for _ in range(size // _CHUNK):
        crc = zlib.crc32(zeros, crc)
    # Full flushes make each block stand alone; an empty final fixed block ends the stream.
    return block * (size // _CHUNK) + b"\x03\x00", crc


@dataclass
class _ZipEntry:
    name: str
    data: bytes
    method: int  # 0 stored, 8 deflated
    crc: int
    size: int  # uncompressed
    flags: int = 0


_LOCAL = struct.Struct("<IHHHHHIIIHH")  # local file header, before the name
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")  # central directory header, before the name
_END = struct.Struct("<IHHHHIIH")  # end of central directory
_DOS_DATE = 0x21  # 1980-01-01


def _write_zip(path: Path, entries: list[_ZipEntry]) -> None:
    """A zip written field by field, so that sizes, CRCs and flags can be what a bomb needs."""
    central = b""
    with path.open("wb") as out:
        for e in entries:
            offset = out.tell()
            name = e.name.encode()
            sizes = (e.crc, len(e.data), e.size, len(name), 0)
            out.write(_LOCAL.pack(0x04034B50, 20, e.flags, e.method, 0, _DOS_DATE, *sizes))
            out.write(name + e.data)
            fields = (0x02014B50, 20, 20, e.flags, e.method, 0, _DOS_DATE, *sizes, 0, 0, 0, 0)
            central += _CENTRAL.pack(*fields, offset) + name
        start = out.tell()
        out.write(central)
        out.write(_END.pack(0x06054B50, 0, 0, len(entries), len(entries), len(central), start, 0))


def _stored(name: str, data: bytes, *, crc: int | None = None, flags: int = 0) -> _ZipEntry:
    return _ZipEntry(name, data, 0, zlib.crc32(data) if crc is None else crc, len(data), flags)


def _tar_member(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    return info.tobuf(format=tarfile.GNU_FORMAT)


def _tar_file(name: str, data: bytes) -> bytes:
    return _tar_member(name, len(data)) + data + bytes(-len(data) % 512)


def _tar_parts(good: dict[str, bytes], bomb: str, after: dict[str, bytes]) -> Iterator[bytes]:
    """The tar stream in three parts: good members + the bomb's header, zeros, the rest."""
    yield b"".join(_tar_file(n, d) for n, d in good.items()) + _tar_member(bomb, GIB)
    yield b""  # GIB zero bytes of the bomb's data go here (a multiple of 512: no padding)
    yield b"".join(_tar_file(n, d) for n, d in after.items()) + bytes(1024)


def _write_sparse_tar(path: Path, parts: Iterable[bytes]) -> None:
    head, _, tail = parts
    with path.open("wb") as out:
        out.write(head)
        out.seek(GIB, io.SEEK_CUR)  # a hole: reads as zeros, takes no disk
        out.write(tail)


def _write_tar_gz(path: Path, parts: Iterable[bytes]) -> None:
    import gzip

    head, _, tail = parts
    zeros = gzip.compress(bytes(_CHUNK), compresslevel=9, mtime=0)
    with path.open("wb") as out:  # concatenated gzip members are one valid gzip stream
        out.write(gzip.compress(head, mtime=0))
        for _ in range(GIB // _CHUNK):
            out.write(zeros)
        out.write(gzip.compress(tail, mtime=0))


def _band_bomb(path: Path) -> None:
    tile = np.zeros((1, 256, 256), dtype=np.uint16)
    tifffile.imwrite(
        path,
        (tile for _ in range(16 * 10 * 10)),
        shape=(16, 2560, 2560),
        dtype=np.uint16,
        tile=(256, 256),
        photometric="minisblack",
        planarconfig="separate",
        compression="zlib",
    )


def make_corpus(dest: Path, good_images: list[Path]) -> Corpus:
    """Write every bomb beside copies of `good_images` (at least 3 real images)."""
    dest.mkdir(parents=True, exist_ok=True)
    corpus = Corpus(dest)
    good = {f"c/{p.name}": p.read_bytes() for p in good_images[:3]}
    first, second, third = list(good)

    images = dest / "images"
    (images / "c").mkdir(parents=True, exist_ok=True)
    for name, data in good.items():
        (images / name).write_bytes(data)
    Image.new("1", (20_000, 20_000)).save(images / "c" / "decompression.png")
    _band_bomb(images / "c" / "bands.tif")
    with (images / "c" / "huge.jpg").open("wb") as out:
        out.truncate(GIB)  # sparse
    corpus.good["images"] = list(good)
    corpus.bombs["images"] = ["c/decompression.png", "c/bands.tif", "c/huge.jpg"]
    corpus.image_bombs = [images / "c" / "decompression.png", images / "c" / "bands.tif"]
    corpus.declared_bytes += 20_000 * 20_000 + 2560 * 2560 * 32 + GIB

    deflated, crc = _zero_deflate(GIB)
    _write_zip(
        dest / "bomb.zip",
        [
            _stored(first, good[first]),
            _ZipEntry("c/bomb.png", deflated, 8, crc, GIB),
            _stored("c/bad-crc.jpg", good[second], crc=zlib.crc32(good[second]) ^ 0xFFFF),
            _stored("c/encrypted.jpg", good[third], flags=0x1),
            _stored(third, good[third]),
        ],
    )
    corpus.good["bomb.zip"] = [first, third]
    corpus.bombs["bomb.zip"] = ["c/bomb.png", "c/bad-crc.jpg", "c/encrypted.jpg"]
    corpus.declared_bytes += GIB

    before = {first: good[first], second: good[second]}
    after = {third: good[third]}
    _write_tar_gz(dest / "bomb.tar.gz", _tar_parts(before, "c/bomb.png", after))
    _write_sparse_tar(dest / "bomb.tar", _tar_parts(before, "c/bomb.png", after))
    for name in ("bomb.tar.gz", "bomb.tar"):
        corpus.good[name] = list(good)
        corpus.bombs[name] = ["c/bomb.png"]
        corpus.declared_bytes += GIB
    return corpus


if __name__ == "__main__":
    images = sorted(Path(sys.argv[2] if len(sys.argv) > 2 else ".").rglob("*.jpg"))[:3]
    made = make_corpus(Path(sys.argv[1]), images)
    print(f"corpus in {made.root}: {made.declared_bytes / GIB:.1f} GiB declared")
