"""Layouts of the benchmarks, the seeded stratified split, and image decoding on real images."""

from __future__ import annotations

import io
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from model.datasets import (
    DatasetNotFoundError,
    discover_dataset,
    limit_per_class,
    load_split,
    save_split,
    stratified_split,
)
from model.imageio import ImageDecodeError, decode_image, read_image
from tests.conftest import DATA_ROOT, NWPU12, UCM_IMAGES, UCM_TIFF, ucm_files


def test_split_is_deterministic_and_stratified() -> None:
    labels = [c for c in range(5) for _ in range(20)]
    a = stratified_split(labels, 0.8, seed=7)
    b = stratified_split(labels, 0.8, seed=7)
    c = stratified_split(labels, 0.8, seed=8)
    assert a == b
    assert a.train != c.train
    assert not set(a.train) & set(a.test)
    assert sorted(a.train + a.test) == list(range(100))
    assert Counter(labels[i] for i in a.train) == {c: 16 for c in range(5)}
    assert Counter(labels[i] for i in a.test) == {c: 4 for c in range(5)}


def test_split_round_trips_through_its_file(tmp_path: Path) -> None:
    images = limit_per_class(discover_dataset("ucm", UCM_IMAGES.parent.parent), 5)
    split = stratified_split(images.labels, 0.8, seed=3)
    save_split(split, images, tmp_path / "split.json")
    assert load_split(tmp_path / "split.json", images) == split


def test_ucm_layout_all_real_images() -> None:
    ucm = discover_dataset("ucm", DATA_ROOT)
    assert len(ucm) == 2100 and len(ucm.class_names) == 21
    assert ucm.paths[0].name == "agricultural00.jpg"


def test_ucm_original_tiff_layout_reads_real_tiffs() -> None:
    ucm = discover_dataset("ucm", UCM_TIFF.parent)
    assert len(ucm.class_names) == 21 and all(p.suffix == ".tif" for p in ucm.paths)
    image = read_image(ucm.paths[0])
    assert image.mode == "RGB" and image.size == (256, 256)


def test_nwpu_layout_and_class_count_note() -> None:
    nwpu = discover_dataset("nwpu", NWPU12.parent)
    assert len(nwpu.class_names) == 12 and len(nwpu) == 8400
    assert any("45 classes" in note for note in nwpu.notes)


def test_satrem_layout_from_real_images(tmp_path: Path) -> None:
    root = tmp_path / "SATREM"
    for cls in ("agricultural", "beach"):
        (root / cls).mkdir(parents=True)
        for src in ucm_files(cls, 3):
            shutil.copy(src, root / cls / src.name)
    satrem = discover_dataset("satrem", tmp_path)
    assert satrem.class_names == ["agricultural", "beach"] and len(satrem) == 6


def test_missing_dataset_says_where_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="UC Merced"):
        discover_dataset("ucm", tmp_path)


def test_smaller_images_exist_and_are_resized() -> None:
    from model.transforms import Preprocessing

    small = next(p for p in sorted(UCM_IMAGES.rglob("*.jpg")) if Image.open(p).size != (256, 256))
    tensor = Preprocessing(96).eval_transform()(read_image(small))
    assert tuple(tensor.shape) == (3, 96, 96)


def _real_array() -> np.ndarray:
    return np.asarray(read_image(ucm_files("beach", 1)[0]))


def test_16_bit_multiband_tiff_keeps_first_three_bands_scaled() -> None:
    rgb = _real_array().astype(np.uint16) * 100 + 500  # 16-bit range
    nir = np.full((*rgb.shape[:2], 1), 65000, dtype=np.uint16)
    buffer = io.BytesIO()
    tifffile.imwrite(
        buffer, np.concatenate([rgb, nir], axis=-1), photometric="minisblack", planarconfig="contig"
    )
    image = decode_image(buffer.getvalue())
    assert image.mode == "RGB" and image.size == (256, 256)
    out = np.asarray(image)
    assert out.min() == 0 and out.max() == 255  # scaled over the kept bands, not the NIR band
    # the ordering of pixel values survives the scaling
    flat_in, flat_out = rgb[..., 0].ravel(), out[..., 0].ravel()
    assert flat_out[np.argmax(flat_in)] == 255


def test_band_first_tiff_and_single_band_grey() -> None:
    rgb = _real_array()
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    assert np.array_equal(np.asarray(decode_image(buffer.getvalue())), rgb)
    grey = io.BytesIO()
    tifffile.imwrite(grey, rgb[..., 1])
    out = np.asarray(decode_image(grey.getvalue()))
    assert out.shape == (256, 256, 3) and np.array_equal(out[..., 0], out[..., 2])


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_png_modes_decode_to_rgb(mode: str) -> None:
    buffer = io.BytesIO()
    Image.fromarray(_real_array()).convert(mode).save(buffer, format="PNG")
    image = decode_image(buffer.getvalue())
    assert image.mode == "RGB" and image.size == (256, 256)


def test_corrupt_and_non_image_bytes_raise_a_clear_error() -> None:
    data = ucm_files("beach", 1)[0].read_bytes()
    with pytest.raises(ImageDecodeError):
        decode_image(data[: len(data) // 3])
    with pytest.raises(ImageDecodeError, match="cannot decode"):
        decode_image(b"hello, not an image")
    with pytest.raises(ImageDecodeError, match="empty"):
        decode_image(b"")


def test_pixel_bomb_is_refused() -> None:
    buffer = io.BytesIO()
    Image.new("L", (5000, 5000)).save(buffer, format="PNG")
    with pytest.raises(ImageDecodeError, match="pixels"):
        decode_image(buffer.getvalue(), max_pixels=1_000_000)
