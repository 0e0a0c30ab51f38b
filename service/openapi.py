"""The error answers in the OpenAPI document: the ones the routes really give, with one body.

Every `ServiceError` is answered as `{"detail": "<reason>"}` (service/app.py), and FastAPI's own
validation errors as `{"detail": [...]}`. Generated clients need both shapes and every status,
so they are added to each operation by what it does: the key check (401, 403), an id or a named
model or path (404), a write that can meet a running job or a busy index (409), a body (413),
an upload (415, 422), the inference worker (503).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error",
    "type": "object",
    "required": ["detail"],
    "properties": {
        "detail": {
            "title": "Detail",
            "description": "Why the request failed: one line, or FastAPI's validation list.",
            "anyOf": [
                {"type": "string"},
                {"type": "array", "items": {"$ref": "#/components/schemas/ValidationError"}},
            ],
        }
    },
}

DESCRIPTIONS = {
    401: "Missing API key (X-API-Key).",
    403: "Wrong API key, no key configured, or a path outside the data root.",
    404: "Unknown id, model or path.",
    409: "Conflicts with a running job, an index run, or the index's model.",
    410: "The indexed image's file can no longer be read.",
    413: "Body over the upload limit, or an image over the pixel/sample cap.",
    415: "The upload is not an image.",
    422: "Invalid parameters or an undecodable image.",
    503: "Model, index, DB or worker not ready.",
}

# Operations that call the inference worker (in process or remote), by path.
WORKER_PATHS = ("/search", "/explain", "/classify", "/models", "/images/{image_id}/similar")


def error_codes(path: str, method: str, operation: dict[str, Any]) -> set[int]:
    """The error statuses one operation can answer."""
    params = operation.get("parameters", [])
    codes = {422}
    if any(p.get("in") == "header" and p.get("name", "").lower() == "x-api-key" for p in params):
        codes |= {401, 403}
    if "{" in path or path in ("/classify", "/evaluations", "/index-jobs", "/search"):
        codes.add(404)
    if method in ("post", "put", "patch", "delete") or "requestBody" in operation:
        codes.add(413)  # the body limit applies to every request that has a body
    if path in ("/evaluations", "/index-jobs") and method == "post":
        codes.add(403)  # a path outside the data root
    if method == "delete" or path in ("/search", "/images/{image_id}/similar"):
        codes.add(409)
    content = operation.get("requestBody", {}).get("content", {})
    if "multipart/form-data" in content:
        codes |= {413, 415}
    if path.startswith("/images/{image_id}/") and path.endswith(("/file", "/thumbnail")):
        codes.add(410)
    if path in WORKER_PATHS or (path == "/images/{image_id}" and method == "delete"):
        codes.add(503)
    if path == "/evaluations" and method == "post":
        codes.add(503)
    return codes


def install_error_responses(app: FastAPI) -> None:
    """Make `app.openapi()` list each operation's error answers with the `Error` body."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        schemas["Error"] = ERROR_SCHEMA
        schemas.setdefault("ValidationError", {"type": "object"})
        body = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
        for path, operations in document.get("paths", {}).items():
            for method, operation in operations.items():
                responses = operation.setdefault("responses", {})
                for code in sorted(error_codes(path, method, operation)):
                    entry = responses.setdefault(str(code), {"description": DESCRIPTIONS[code]})
                    entry["content"] = body
                    if code == 422:
                        entry["description"] = DESCRIPTIONS[422]
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]
