"""The search page's map in a real browser (Debian's Chromium via Playwright, uvicorn on a free
port): the real COG indexed as 16 tiles, its overview as the offline background, a search
draws the hits' footprints, a click highlights one, and a rectangle dragged on the map narrows
the results to the tiles meeting it (the same ids the API gives for that bbox).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import rasterio
from PIL import Image
from playwright.sync_api import Browser, Page, sync_playwright
from rasterio.windows import Window

from tests.browser.test_web_page import (
    CHROMIUM,
    CHROMIUM_ARGS,
    DATA_ROOT,
    make_checkpoint,
    wait_ready,
)
from tests.helpers import free_port

COG = DATA_ROOT / "geotiff" / "cogeo.tif"
TILES = 16

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.is_file() and not os.environ.get("CI"),
        reason=f"Debian's chromium is not installed at {CHROMIUM} (apt-get install -y chromium)",
    ),
]


@dataclass(frozen=True)
class GeoService:
    url: str
    log: Path


@pytest.fixture(scope="module")
def geo_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GeoService]:
    """The real COG indexed with a small embedder, served by the app under uvicorn."""
    from indexer.options import IndexOptions
    from indexer.pipeline import index_source

    if not COG.is_file():
        pytest.fail(f"the real GeoTIFF is missing at {COG} (set RSIR_DATA_ROOT)")
    work = tmp_path_factory.mktemp("browser-geo")
    checkpoint = make_checkpoint(work / "embedder.pt", [])
    index_dir = work / "index"
    summary = index_source(
        COG, checkpoint, IndexOptions(index_dir=index_dir, num_workers=0, device="cpu")
    )
    assert summary.index_total == TILES, summary
    port = free_port()
    env = {
        **os.environ,
        "RSIR_INDEX_DIR": str(index_dir),
        "RSIR_CHECKPOINT": str(checkpoint),
        "RSIR_DEVICE": "cpu",
        "RSIR_NUM_WORKERS": "0",
    }
    for name in ("RSIR_DB_URL", "RSIR_WORKER_URL", "RSIR_API_KEY"):
        env.pop(name, None)
    log = work / "serve.log"
    command = [sys.executable, "-m", "uvicorn", "--factory", "service.app:create_app",
               "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(command, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, log)
        yield GeoService(url, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield page
    finally:
        context.close()
    assert not errors, f"uncaught script errors on the page: {errors}"


def query_tile(dest: Path) -> Path:
    """A 256-px window of the COG saved as PNG: a query cut from the scene."""
    with rasterio.open(COG) as src:
        pixels = src.read(window=Window(256, 256, 256, 256))
    Image.fromarray(np.moveaxis(pixels, 0, -1)).save(dest)
    return dest


def result_ids(page: Page) -> list[int]:
    return [
        int(i)
        for i in page.eval_on_selector_all("#results .hit", "ns => ns.map(n => n.dataset.id)")
    ]


def test_hits_on_the_map_click_highlights_and_a_rectangle_narrows(
    geo_service: GeoService, page: Page, tmp_path: Path
) -> None:
    page.goto(geo_service.url + "/")
    # Leaflet is served from the set-up script's install, never a CDN.
    assert page.evaluate("typeof L") == "object"
    scripts = page.eval_on_selector_all("script[src]", "ss => ss.map(s => s.src)")
    assert all(s.startswith(geo_service.url) for s in scripts), scripts
    # The offline background: the scene's own overview, loaded.
    page.wait_for_selector("#map[data-scenes='1']")
    page.wait_for_function(
        "() => { const i = document.querySelector('#map img.scene-overview');"
        " return i && i.complete && i.naturalWidth > 0; }"
    )
    page.fill("#k-input", str(TILES))
    page.set_input_files("#image-input", str(query_tile(tmp_path / "query.png")))
    page.wait_for_selector(f"#map[data-hits='{TILES}']")
    assert page.locator("#map path.hit-footprint").count() == TILES
    ids = result_ids(page)
    assert len(ids) == TILES
    assert page.locator("#results .hit").first.locator(".hit-place").inner_text().startswith("37.")

    # Clicking a hit card highlights its footprint (and the card); clicking a footprint too.
    page.locator("#results .hit").nth(2).locator(".hit-meta").click()
    highlighted = page.locator("#map path.highlighted")
    assert highlighted.count() == 1
    assert highlighted.get_attribute("data-id") == str(ids[2])
    assert page.locator("#results .hit.highlighted").get_attribute("data-id") == str(ids[2])
    page.locator(f"#map path.hit-footprint[data-id='{ids[5]}']").click()
    assert page.locator("#map path.highlighted").get_attribute("data-id") == str(ids[5])
    assert page.locator("#results .hit.highlighted").get_attribute("data-id") == str(ids[5])
    page.screenshot(path=str(tmp_path / "map.png"), full_page=True)

    # A rectangle over the left part of the scene: fewer hits, exactly those the API gives.
    page.click("#draw-area")
    box = page.locator("#map").bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] * 0.05, box["y"] + box["height"] * 0.05)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.45, box["y"] + box["height"] * 0.95, steps=8)
    page.mouse.up()
    page.wait_for_function(
        f"() => document.getElementById('map').dataset.hits !== '{TILES}'"
        " && !document.body.classList.contains('busy')"
    )
    area = page.get_attribute("#map", "data-area")
    assert area and "Area: " in page.inner_text("#area-text")
    narrowed = result_ids(page)
    assert 0 < len(narrowed) < TILES
    with query_tile(tmp_path / "again.png").open("rb") as handle:
        data = handle.read()
    expected = httpx.post(
        geo_service.url + "/search",
        files={"image": ("q.png", io.BytesIO(data), "image/png")},
        data={"k": TILES, "bbox": area},
        timeout=60,
    ).json()["hits"]
    assert narrowed == [h["id"] for h in expected]
    assert page.locator("#map path.hit-footprint").count() == len(narrowed)
    page.screenshot(path=str(tmp_path / "map-area.png"), full_page=True)

    # Clearing the area brings every tile back.
    page.click("#clear-area")
    page.wait_for_selector(f"#map[data-hits='{TILES}']")
    assert len(result_ids(page)) == TILES
