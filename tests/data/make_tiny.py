"""Write the tiny fixtures: a few synthetic scenes, their archives and a small GeoTIFF.

Why: most tests read the real benchmark images of ../shared/data (marked `real_data`, run by CI).
The tests of readers, decoders and archives need images, not those images; they use this set,
generated in seconds into a temporary folder by the `tiny` fixture (tests/conftest.py) or by
hand (`python tests/data/make_tiny.py DEST`), so they run on a machine without the data. Nothing
here is committed as data. The output is the same on every run (seeded pixels, fixed archive
times), so a failure reproduces.

| path | what |
| --- | --- |
| scenes/<class>/<class>_<i>.jpg | 4 classes (stripes, checks, dots, gradient) x 4, 64 x 48 RGB |
| scenes.zip, scenes.tar, scenes.tar.gz | the same entries, `<class>/<class>_<i>.jpg` |
| geo/utm.tif | 3-band uint8 GeoTIFF, 512 x 384 px of 10 m in EPSG:32631, a nodata border |
"""

from __future__ import annotations

import gzip
import io
import sys
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("stripes", "checks", "dots", "gradient")
PER_CLASS = 4
WIDTH, HEIGHT = 64, 48
GEO_WIDTH, GEO_HEIGHT = 512, 384
GEO_PIXEL_M = 10.0
GEO_ORIGIN = (500_000.0, 5_000_000.0)  # west, north in EPSG:32631 (UTM 31N)
GEO_NODATA_BORDER = 64  # pixels of nodata (0) along the left edge
_MTIME = 1_700_000_000  # fixed archive times: the same bytes on every run


@dataclass
class Tiny:
    """Where the tiny fixtures are, and what each holds."""

    root: Path
    images: dict[str, list[Path]] = field(default_factory=dict)  # class -> files

    @property
    def scenes(self) -> Path:
        return self.root / "scenes"

    @property
    def entries(self) -> list[str]:
        """Archive entry names, sorted as every listing returns them."""
        return sorted(
            p.relative_to(self.scenes).as_posix() for ps in self.images.values() for p in ps
        )

    @property
    def geotiff(self) -> Path:
        return self.root / "geo" / "utm.tif"


def pattern(cls: str, i: int) -> np.ndarray:
    """One HEIGHT x WIDTH x 3 uint8 image of class `cls`: a class-specific layout, image-specific
    colours, phase and seeded noise, so images of a class look alike and classes do not."""
    rng = np.random.default_rng(CLASSES.index(cls) * 100 + i)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    phase = i * 3
    if cls == "stripes":
        mask = ((x + phase) // 4) % 2 == 0
    elif cls == "checks":
        mask = (((x + phase) // 8) + (y // 8)) % 2 == 0
    elif cls == "dots":
        mask = ((x - 16 - phase) % 16) ** 2 + ((y - 8) % 16) ** 2 < 20
    else:
        mask = x < (WIDTH * (0.3 + 0.1 * i))
    colour_a = rng.integers(0, 256, 3)
    colour_b = 255 - colour_a
    image = np.where(mask[..., None], colour_a, colour_b).astype(np.float32)
    image += rng.normal(0, 8, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _tar(path: Path, members: dict[str, bytes], compress: bool) -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), _MTIME, 0o644
            tar.addfile(info, io.BytesIO(data))
    if compress:
        with path.open("wb") as out, gzip.GzipFile(fileobj=out, mode="wb", mtime=_MTIME) as gz:
            gz.write(raw.getvalue())
    else:
        path.write_bytes(raw.getvalue())


def _zip(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, date_time=(2023, 11, 14, 22, 13, 20))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)


def _geotiff(path: Path) -> None:
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:GEO_HEIGHT, 0:GEO_WIDTH]
    bands = np.stack(
        [
            (x * 255 // GEO_WIDTH),
            (y * 255 // GEO_HEIGHT),
            ((x // 32 + y // 32) % 2) * 200 + 20,
        ]
    ).astype(np.float32)
    bands += rng.normal(0, 4, bands.shape)
    data = np.clip(bands, 1, 255).astype(np.uint8)
    data[:, :, :GEO_NODATA_BORDER] = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "GTiff",
        "width": GEO_WIDTH,
        "height": GEO_HEIGHT,
        "count": 3,
        "dtype": "uint8",
        "crs": "EPSG:32631",
        "transform": from_origin(*GEO_ORIGIN, GEO_PIXEL_M, GEO_PIXEL_M),
        "nodata": 0,
        "tiled": True,
        "blockxsize": 128,
        "blockysize": 128,
    }
    with rasterio.open(path, "w", **profile) as dataset:
        dataset.write(data)


def make_tiny(dest: Path) -> Tiny:
    """Write every tiny fixture under `dest` (created) and say where they are."""
    tiny = Tiny(Path(dest))
    members: dict[str, bytes] = {}
    for cls in CLASSES:
        folder = tiny.scenes / cls
        folder.mkdir(parents=True, exist_ok=True)
        tiny.images[cls] = []
        for i in range(PER_CLASS):
            path = folder / f"{cls}_{i}.jpg"
            buffer = io.BytesIO()
            Image.fromarray(pattern(cls, i)).save(buffer, "JPEG", quality=92)
            path.write_bytes(buffer.getvalue())
            tiny.images[cls].append(path)
            members[f"{cls}/{path.name}"] = buffer.getvalue()
    _zip(tiny.root / "scenes.zip", members)
    _tar(tiny.root / "scenes.tar", members, compress=False)
    _tar(tiny.root / "scenes.tar.gz", members, compress=True)
    _geotiff(tiny.geotiff)
    return tiny


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/data/make_tiny.py DEST")
    made = make_tiny(Path(sys.argv[1]))
    print(f"wrote {len(made.entries)} images, 3 archives and {made.geotiff} under {made.root}")
