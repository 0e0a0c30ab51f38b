"""The web pages in a real browser: Debian's headless Chromium driven by Playwright, against
the app factory under uvicorn on a free port of 127.0.0.1 (settings from the environment), with
a small embedder and a real index of real UCM images. A subprocess, not the ASGI transport: the
browser must load pages, scripts and thumbnails over real HTTP, as in production.

What must hold for a user: choosing an image on `/` shows the top-k grid with thumbnails that
actually load, scores and labels; the heat-map appears on request; a bad upload shows the
server's reason; the evaluations page lists jobs with their figures. Screenshots go to
$RSIR_BROWSER_SCREENSHOTS (default: the test's temporary folder) for a human look.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.helpers import free_port

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
REPO = Path(__file__).resolve().parents[2]
DATA_ROOT = Path(os.environ.get("RSIR_DATA_ROOT", REPO.parent / "shared" / "data")).resolve()
UCM_IMAGES = DATA_ROOT / "UCMerced_LandUse" / "Images"
PER_CLASS = 2
IMAGE_SIZE = 64
API_KEY = "browser-test-key-0123456789"


@dataclass(frozen=True)
class LiveService:
    """A running service and what it indexed."""

    url: str
    archive: Path  # the indexed copy of the images: <class>/<file>
    api_key: str
    log: Path


def copy_subset(dest: Path, per_class: int) -> Path:
    """The first `per_class` real UCM images of every class, copied in the <class>/<file> layout."""
    if not UCM_IMAGES.is_dir():
        pytest.fail(f"the real UCM images are missing at {UCM_IMAGES} (set RSIR_DATA_ROOT)")
    for class_dir in sorted(p for p in UCM_IMAGES.iterdir() if p.is_dir()):
        (dest / class_dir.name).mkdir(parents=True)
        for image in sorted(class_dir.iterdir())[:per_class]:
            shutil.copy2(image, dest / class_dir.name / image.name)
    return dest


def make_checkpoint(path: Path, class_names: list[str]) -> Path:
    """A seeded, randomly initialised ResNet-18 embedder (no weights download on these machines)."""
    import torch

    from model.checkpoint import embedder_checkpoint, save_checkpoint
    from model.embedder import EmbedderConfig, build_embedder
    from model.transforms import Preprocessing

    torch.manual_seed(0)
    net, init = build_embedder(EmbedderConfig(backbone="resnet18"), pretrained=False)
    net.eval()
    ckpt = embedder_checkpoint(net, Preprocessing(image_size=IMAGE_SIZE), class_names, init, "ucm")
    save_checkpoint(ckpt, path)
    return path


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 180.0) -> None:
    """Poll /ready until it answers 200; fail with the server's log if it dies or never is."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the service exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            response = httpx.get(f"{url}/ready", timeout=5.0)
            if response.status_code == 200:
                return
            last = f"{response.status_code} {response.text[:500]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.5)
    tail = log.read_text()[-4000:]
    pytest.fail(f"the service is not ready after {timeout:.0f} s ({last}):\n{tail}")


@pytest.fixture(scope="session")
def live_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    """Index a few real UCM images per class with a small embedder, then serve them."""
    from indexer.options import IndexOptions
    from indexer.pipeline import index_source

    work = tmp_path_factory.mktemp("browser-service")
    archive = copy_subset(work / "data" / "ucm", PER_CLASS)
    classes = sorted(p.name for p in archive.iterdir())
    checkpoint = make_checkpoint(work / "embedder.pt", classes)
    index_dir = work / "index"
    summary = index_source(
        archive,
        checkpoint,
        IndexOptions(index_dir=index_dir, batch_size=16, num_workers=0, device="cpu"),
    )
    assert summary.index_total == PER_CLASS * len(classes), summary

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "RSIR_DATA_ROOT": str(work / "data"),
        "RSIR_INDEX_DIR": str(index_dir),
        "RSIR_CHECKPOINT": str(checkpoint),
        "RSIR_API_KEY": API_KEY,
        "RSIR_DEVICE": "cpu",
        "RSIR_NUM_WORKERS": "0",
        "RSIR_LOG_LEVEL": "INFO",
    }
    env.pop("RSIR_DB_URL", None)
    env.pop("RSIR_WORKER_URL", None)
    log = work / "serve.log"
    command = [sys.executable, "-m", "uvicorn", "--factory", "service.app:create_app",
               "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(command, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_ready(url, proc, log)
        yield LiveService(url=url, archive=archive, api_key=API_KEY, log=log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(
        # In CI a missing browser is a failure, not a skip: scripts/test.sh installs it.
        not CHROMIUM.is_file() and not os.environ.get("CI"),
        reason=f"Debian's chromium is not installed at {CHROMIUM} (apt-get install -y chromium)",
    ),
]


# Whether every <img> of a selector finished loading with real pixels.
ALL_LOADED_JS = """(selector) => {
    const imgs = Array.from(document.querySelectorAll(selector));
    return imgs.length > 0 && imgs.every((img) => img.complete && img.naturalWidth > 0);
}"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium for the module (never a Playwright-downloaded build)."""
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
    """A fresh page that records uncaught script errors (each one fails the test)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(60_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
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


# Drop a file on the drop zone as a user's drag and drop would.
DROP_JS = """({ b64, name }) => {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const transfer = new DataTransfer();
    transfer.items.add(new File([bytes], name, { type: "image/jpeg" }));
    const zone = document.getElementById("dropzone");
    for (const type of ["dragenter", "dragover", "drop"]) {
        zone.dispatchEvent(
            new DragEvent(type, { dataTransfer: transfer, bubbles: true, cancelable: true })
        );
    }
}"""


def query_image(service: LiveService) -> tuple[Path, str]:
    """An indexed image and its class: it must come back first, as its own nearest neighbour."""
    class_dir = sorted(p for p in service.archive.iterdir() if p.is_dir())[5]
    return sorted(class_dir.iterdir())[0], class_dir.name


def test_search_page_shows_loaded_thumbnails(
    live_service: LiveService, page: Page, shots: Path
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
    live_service: LiveService, page: Page, tmp_path: Path, shots: Path
) -> None:
    image, _ = query_image(live_service)
    page.goto(live_service.url + "/")
    # The filter suggests the served embedder's classes (GET /models).
    page.wait_for_function("() => document.querySelectorAll('#label-options option').length > 0")
    options = page.eval_on_selector_all("#label-options option", "os => os.map((o) => o.value)")
    assert options == live_service_classes(live_service)
    page.fill("#label-input", "beach")
    # Dropped rather than chosen: the drop zone's path, with a real DataTransfer.
    page.evaluate(
        DROP_JS, {"b64": base64.b64encode(image.read_bytes()).decode(), "name": image.name}
    )
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
            return job
        time.sleep(0.5)
    pytest.fail(f"evaluation still not finished after 300 s: {job}")


def test_evaluations_page_shows_figures_and_pr_curve(
    live_service: LiveService, page: Page, shots: Path
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


def test_like_dislike_and_refine_change_the_results(live_service: LiveService, page: Page) -> None:
    image, label = query_image(live_service)
    page.goto(live_service.url + "/")
    page.fill("#k-input", "8")
    page.set_input_files("#image-input", str(image))
    page.wait_for_function("document.querySelectorAll('#results .hit').length === 8")
    before = page.eval_on_selector_all("#results .hit", "nodes => nodes.map((n) => n.dataset.id)")
    assert page.locator("#refine-button").is_disabled()

    hits = page.locator("#results .hit")
    liked = [hits.nth(i).get_attribute("data-id") for i in (0, 5)]
    disliked = [hits.nth(i).get_attribute("data-id") for i in (1, 2)]
    for i in (0, 5):
        hits.nth(i).locator(".like").click()
    for i in (1, 2):
        hits.nth(i).locator(".dislike").click()
    assert hits.nth(0).locator(".like").get_attribute("aria-pressed") == "true"
    assert hits.nth(1).locator(".dislike").get_attribute("aria-pressed") == "true"

    assert liked and disliked
    # The same query without marks gives the same order: a change is the feedback's doing.
    page.click("#refine-button")
    page.wait_for_function(
        "(old) => { const ids = [...document.querySelectorAll('#results .hit')]"
        ".map((n) => n.dataset.id); return ids.length === 8 && ids.join() !== old.join(); }",
        arg=before,
    )
    after = page.eval_on_selector_all("#results .hit", "nodes => nodes.map((n) => n.dataset.id)")
    assert after != before
    # The marks stay with the query: a liked hit that comes back still shows as liked.
    for hit_id in liked:
        if hit_id in after:
            node = page.locator(f"#results .hit[data-id='{hit_id}'] .like")
            assert node.get_attribute("aria-pressed") == "true"
    assert label  # the query's class exists (the page searched a real indexed image)
