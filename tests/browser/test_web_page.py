"""The web pages in a real browser: Debian's headless Chromium driven by Playwright, against
the app under uvicorn with a real index of real UCM images (see conftest.py).

What must hold for a user: choosing an image on `/` shows the top-k grid with thumbnails that
actually load, scores and labels; the heat-map appears on request; a bad upload shows the
server's reason; the evaluations page lists jobs with their figures. Screenshots go to
$RSIR_BROWSER_SCREENSHOTS (default: the test's temporary folder) for a human look.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS, PER_CLASS, LiveService

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.is_file(),
        reason=f"Debian's chromium is not installed at {CHROMIUM} (apt-get install -y chromium)",
    ),
]

sync_api = pytest.importorskip("playwright.sync_api")

# Whether every <img> of a selector finished loading with real pixels.
ALL_LOADED_JS = """(selector) => {
    const imgs = Array.from(document.querySelectorAll(selector));
    return imgs.length > 0 && imgs.every((img) => img.complete && img.naturalWidth > 0);
}"""


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """One headless Chromium for the module (never a Playwright-downloaded build)."""
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: object) -> Iterator[sync_api.Page]:
    """A fresh page that records uncaught script errors (each one fails the test)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    page = context.new_page()
    page.set_default_timeout(60_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.script_errors = errors  # type: ignore[attr-defined]
    try:
        yield page
    finally:
        context.close()
    assert not errors, f"uncaught script errors on the page: {errors}"


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go."""
    folder = os.environ.get("RSIR_BROWSER_SCREENSHOTS")
    path = Path(folder) if folder else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def query_image(service: LiveService) -> tuple[Path, str]:
    """An indexed image and its class: it must come back first, as its own nearest neighbour."""
    class_dir = sorted(p for p in service.archive.iterdir() if p.is_dir())[5]
    return sorted(class_dir.iterdir())[0], class_dir.name


def test_search_page_shows_loaded_thumbnails(
    live_service: LiveService, page: sync_api.Page, shots: Path
) -> None:
    image, label = query_image(live_service)
    console_errors: list[str] = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    page.goto(live_service.url + "/")
    assert page.title().startswith("Search by image")
    k = 8
    page.fill("#k-input", str(k))

    page.set_input_files("#image-input", str(image))  # choosing a file starts the search
    page.wait_for_selector("#results .hit img.thumb")
    page.wait_for_function(ALL_LOADED_JS, arg="#results img.thumb")

    hits = page.locator("#results .hit")
    assert hits.count() == k
    first = hits.first
    assert first.locator(".label").inner_text() == label
    assert float(first.locator(".score").inner_text()) == pytest.approx(1.0, abs=1e-3)
    scores = [float(s) for s in hits.locator(".score").all_inner_texts()]
    assert scores == sorted(scores, reverse=True)
    widths = page.eval_on_selector_all(
        "#results img.thumb", "imgs => imgs.map((img) => img.naturalWidth)"
    )
    assert all(w > 0 for w in widths), widths
    assert page.locator("#query-preview").evaluate("img => img.naturalWidth") > 0
    assert f"{k} results" in page.inner_text("#status")
    assert page.locator("#error").is_hidden()
    assert not console_errors, console_errors
    page.screenshot(path=str(shots / "search.png"), full_page=True)

    # The heat-map on request: a PNG that the browser decodes.
    page.check("#explain-input")
    page.wait_for_function(
        "() => { const i = document.getElementById('heatmap'); "
        "return i.complete && i.naturalWidth > 0; }"
    )
    assert page.locator("#heatmap-box").is_visible()
    assert page.locator("#error").is_hidden()
    page.screenshot(path=str(shots / "search-heatmap.png"), full_page=True)


def test_label_filter_and_bad_upload(
    live_service: LiveService, page: sync_api.Page, tmp_path: Path, shots: Path
) -> None:
    image, _ = query_image(live_service)
    page.goto(live_service.url + "/")
    page.fill("#label-input", "beach")
    page.set_input_files("#image-input", str(image))
    page.wait_for_function(ALL_LOADED_JS, arg="#results img.thumb")
    labels = page.locator("#results .hit .label").all_inner_texts()
    assert labels == ["beach"] * PER_CLASS, labels

    # Not an image: the server's 415 reason is shown and the old grid is cleared.
    fake = tmp_path / "notes.jpg"
    fake.write_text("this is not a picture\n" * 20)
    page.set_input_files("#image-input", str(fake))
    error = page.locator("#error")
    error.wait_for(state="visible")
    assert "415" in error.inner_text()
    assert page.locator("#results .hit").count() == 0
    page.screenshot(path=str(shots / "search-error.png"), full_page=True)


def run_evaluation(service: LiveService) -> dict[str, object]:
    """Start an all-vs-all evaluation of the indexed folder over the API and wait for its end."""
    response = httpx.post(
        service.url + "/evaluations",
        json={"dataset": "folder", "root": service.archive.name, "protocol": "all-vs-all"},
        headers={"X-API-Key": service.api_key},
        timeout=30,
    )
    assert response.status_code == 202, response.text
    url = f"{service.url}/evaluations/{response.json()['id']}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        job = httpx.get(url, timeout=10).json()
        if job["status"] in ("done", "failed"):
            return job  # type: ignore[no-any-return]
        time.sleep(0.5)
    pytest.fail(f"evaluation still not finished after 300 s: {job}")


def test_evaluations_page_shows_figures_and_pr_curve(
    live_service: LiveService, page: sync_api.Page, shots: Path
) -> None:
    job = run_evaluation(live_service)
    assert job["status"] == "done", job
    results = job["results"]
    assert isinstance(results, dict)
    listing = httpx.get(live_service.url + "/evaluations", timeout=10).json()

    page.goto(live_service.url + "/ui/evaluations")
    card = page.locator(f"#evaluations article.job[data-id='{job['id']}']")
    card.wait_for()
    assert page.locator("#evaluations article.job").count() == len(listing["items"])
    assert card.locator(".badge").inner_text() == "done"
    assert float(card.locator(".map strong").inner_text()) == pytest.approx(
        results["map"], abs=5e-4
    )
    assert card.locator("table.atk").count() == 2  # mAP@k and P@k
    page.wait_for_function(
        "(sel) => { const i = document.querySelector(sel); "
        "return i && i.complete && i.naturalWidth > 0; }",
        arg=f"article.job[data-id='{job['id']}'] .pr img",
    )
    card.locator(".per-class summary").click()
    assert card.locator(".bar-row").count() == len(live_service_classes(live_service))
    assert page.locator("#error").is_hidden()
    page.screenshot(path=str(shots / "evaluations.png"), full_page=True)


def live_service_classes(service: LiveService) -> list[str]:
    """The class folders of the indexed copy."""
    return sorted(p.name for p in service.archive.iterdir() if p.is_dir())
