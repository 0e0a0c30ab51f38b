"""The demo honours the settings it is given, RSIR_MAX_PIXELS included."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from rsir.demo import run_demo
from rsir_common.settings import Settings
from tests.conftest import UCM_IMAGES

# Real UCM images a few pixels short of 256 x 256, and full 256 x 256 ones.
SMALL = {
    "airplane": ["airplane55.jpg", "airplane59.jpg", "airplane76.jpg"],
    "baseballdiamond": ["baseballdiamond15.jpg", "baseballdiamond35.jpg", "baseballdiamond45.jpg"],
}
FULL = {"airplane": [], "baseballdiamond": ["baseballdiamond00.jpg", "baseballdiamond01.jpg"]}


@pytest.mark.slow
def test_demo_applies_the_pixel_cap_of_its_settings(
    tmp_path: Path,
    trained_checkpoint: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    images = tmp_path / "data" / "UCMerced_LandUse" / "Images"
    for cls in SMALL:
        (images / cls).mkdir(parents=True)
        for name in SMALL[cls] + FULL[cls]:
            shutil.copy(UCM_IMAGES / cls / name, images / cls / name)
    monkeypatch.setenv("RSIR_MAX_PIXELS", str(256 * 256 - 1))  # refuses the full-size images
    settings = Settings(
        data_root=tmp_path / "data",
        index_dir=tmp_path / "work" / "index",
        checkpoint=trained_checkpoint,
        device="cpu",
        num_workers=0,
        batch_size=4,
    )
    assert settings.max_pixels == 256 * 256 - 1
    run_demo(settings, train_epochs=1, image_size=64, serve=False)
    out = capsys.readouterr().out
    assert "added 6, already indexed 0, corrupt 2; index holds 6" in out, out
