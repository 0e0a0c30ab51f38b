"""The web router without a browser: pages render, every asset they link is served with its
type, and nothing outside the static whitelist is (no path is ever joined from the URL)."""

from __future__ import annotations

import re

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.web import STATIC_PREFIX, router


@pytest.fixture
def client() -> TestClient:
    app = FastAPI()
    app.include_router(router)
    return TestClient(app)


@pytest.mark.parametrize(
    ("path", "title"), [("/", "Search by image"), ("/ui/evaluations", "Evaluations")]
)
def test_pages_render_with_their_assets(client: TestClient, path: str, title: str) -> None:
    page = client.get(path)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert f"<title>{title} · rsir</title>" in page.text
    assets = re.findall(r'(?:src|href)="([^"]+\.(?:css|js))"', page.text)
    assert {a.rsplit("/", 1)[1] for a in assets} >= {"app.css", "common.js"}
    for asset in assets:
        response = client.get(asset)
        assert response.status_code == 200, asset
        kind = "text/css" if asset.endswith(".css") else "text/javascript"
        assert response.headers["content-type"].startswith(kind)
        assert response.content
    assert not re.search(r'(?:src|href)="(?:https?:)?//', page.text)  # no CDN: works offline


def test_links_follow_the_mount_prefix() -> None:
    app = FastAPI()
    app.include_router(router)
    page = TestClient(app, root_path="/rsir").get("/")
    assert f'href="/rsir{STATIC_PREFIX}/app.css"' in page.text
    assert 'data-base="/rsir"' in page.text


@pytest.mark.parametrize(
    "name", ["nope.js", "..%2Fweb.py", "%2E%2E%2F__init__.py", "web.py", "search.html"]
)
def test_only_whitelisted_static_files(client: TestClient, name: str) -> None:
    response = client.get(f"{STATIC_PREFIX}/{name}")
    assert response.status_code == 404
    assert "detail" in response.json()
