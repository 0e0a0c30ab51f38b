"""The browser pages of rsir: the query-by-image search page and the evaluations page.

Why server-rendered HTML plus a little vanilla JS: the pages must work in any browser on a
machine without internet (no CDN, no build step), and all data already comes from the JSON API
(`POST /search`, `POST /explain`, `GET /evaluations`), so the pages only lay it out. The static
files are served by this router itself, so including the router is all an app has to do.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.templating import Jinja2Templates

PACKAGE_DIR = Path(__file__).resolve().parent
TEMPLATES_DIR = PACKAGE_DIR / "templates"
STATIC_DIR = PACKAGE_DIR / "static"
STATIC_PREFIX = "/ui/static"
# Leaflet (the map), installed from the npm registry by scripts/setup.sh (`npm ci` in
# service/vendor, git-ignored node_modules/) and the same way in the Docker image.
LEAFLET_DIR = PACKAGE_DIR / "vendor" / "node_modules" / "leaflet" / "dist"
LEAFLET_PREFIX = "/ui/vendor/leaflet"

# Only these suffixes are served, each with its type; anything else in static/ stays private.
_STATIC_TYPES: dict[str, str] = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}

router = APIRouter(tags=["web"])


@lru_cache(maxsize=1)
def _templates() -> Jinja2Templates:
    """The Jinja environment, made on first use (not at import)."""
    return Jinja2Templates(directory=str(TEMPLATES_DIR))


@lru_cache(maxsize=1)
def _leaflet_files() -> dict[str, Path]:
    """Relative name -> path of Leaflet's servable files (script, CSS, images): a whitelist."""
    if not LEAFLET_DIR.is_dir():
        return {}
    return {
        p.relative_to(LEAFLET_DIR).as_posix(): p
        for p in LEAFLET_DIR.rglob("*")
        if p.is_file() and p.suffix in _STATIC_TYPES and not p.name.startswith("leaflet-src")
    }


def leaflet_available() -> bool:
    """Whether the set-up script installed Leaflet (else the page shows no map, and says so)."""
    return {"leaflet.js", "leaflet.css"} <= set(_leaflet_files())


@lru_cache(maxsize=1)
def _static_files() -> dict[str, Path]:
    """Name -> path of every servable static file: a whitelist, so no path is ever joined."""
    return {p.name: p for p in STATIC_DIR.iterdir() if p.is_file() and p.suffix in _STATIC_TYPES}


def _page(request: Request, template: str, title: str, active: str) -> HTMLResponse:
    """Render one page; `base` is the app's mount prefix so links work behind a proxy."""
    base = str(request.scope.get("root_path", "")).rstrip("/")
    context = {
        "title": title,
        "active": active,
        "base": base,
        "static": base + STATIC_PREFIX,
        "leaflet": base + LEAFLET_PREFIX if leaflet_available() else None,
    }
    return _templates().TemplateResponse(request, template, context)


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def search_page(request: Request) -> HTMLResponse:
    """Query by image: drop or choose an image, see the top-k neighbours and the heat-map."""
    return _page(request, "search.html", "Search by image", "search")


@router.get("/ui/evaluations", response_class=HTMLResponse, include_in_schema=False)
def evaluations_page(request: Request) -> HTMLResponse:
    """Evaluation jobs with their status, figures (mAP, P@k, per-class AP) and PR curves."""
    return _page(request, "evaluations.html", "Evaluations", "evaluations")


@router.get(STATIC_PREFIX + "/{name}", include_in_schema=False)
def static_file(name: str) -> FileResponse:
    """The page's CSS and JS (whitelisted names only; revalidated so edits show up)."""
    path = _static_files().get(name)
    if path is None:
        raise HTTPException(status_code=404, detail=f"no static file {name!r}")
    return FileResponse(
        path,
        media_type=_STATIC_TYPES[path.suffix],
        headers={"Cache-Control": "no-cache"},
    )


@router.get(LEAFLET_PREFIX + "/{name:path}", include_in_schema=False)
def leaflet_file(name: str) -> FileResponse:
    """Leaflet's script, CSS and marker/layer images (whitelisted names only)."""
    path = _leaflet_files().get(name)
    if path is None:
        raise HTTPException(status_code=404, detail=f"no Leaflet file {name!r}")
    return FileResponse(
        path,
        media_type=_STATIC_TYPES[path.suffix],
        headers={"Cache-Control": "public, max-age=86400"},
    )
