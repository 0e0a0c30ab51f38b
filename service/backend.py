"""How the API reaches the inference core: in the same process, or over HTTP to `rsir worker`.

Both backends take the upload's bytes (already checked by the API) and its decoded image; the
local one uses the image, the remote one forwards the bytes, which the worker checks again.
Errors come back as the same `ServiceError`s, so the API answers identically in both modes.
"""

from __future__ import annotations

import base64
from typing import Any, Protocol

import anyio.to_thread
import httpx
from PIL import Image

from indexer.area import BBox
from indexer.search import Hit
from service.classifier_pool import ClassifyResult, Prediction
from service.errors import NotReadyError, ServiceError
from service.inference import InferenceCore, ModelInfo
from service.search_engine import SearchOptions, SearchResult

INTERNAL_PREFIX = "/internal"


class Backend(Protocol):
    """The operations the HTTP routes need from the inference side."""

    async def search(
        self, data: bytes, image: Image.Image, options: SearchOptions, bbox: BBox | None = None
    ) -> SearchResult: ...

    async def similar(self, image_id: int, options: SearchOptions) -> SearchResult: ...

    async def explain(self, data: bytes, image: Image.Image) -> bytes: ...

    async def classify(
        self, data: bytes, image: Image.Image, model: str | None, top_k: int, explain: bool
    ) -> ClassifyResult: ...

    async def remove_image(self, image_id: int) -> int: ...

    async def models(self) -> list[ModelInfo]: ...

    async def status(self) -> dict[str, Any]: ...

    async def aclose(self) -> None: ...


class LocalBackend:
    """The search engine and classifier pool in this process (the embedded default)."""

    def __init__(self, core: InferenceCore) -> None:
        self.core = core

    async def search(
        self, data: bytes, image: Image.Image, options: SearchOptions, bbox: BBox | None = None
    ) -> SearchResult:
        return await self.core.retrieval.search(image, options, bbox)

    async def similar(self, image_id: int, options: SearchOptions) -> SearchResult:
        return await self.core.retrieval.similar(image_id, options)

    async def explain(self, data: bytes, image: Image.Image) -> bytes:
        return await self.core.retrieval.explain(image)

    async def classify(
        self, data: bytes, image: Image.Image, model: str | None, top_k: int, explain: bool
    ) -> ClassifyResult:
        return await self.core.classifiers.classify(image, model, top_k, explain)

    async def remove_image(self, image_id: int) -> int:
        return await anyio.to_thread.run_sync(self.core.retrieval.remove_images, [image_id])

    async def models(self) -> list[ModelInfo]:
        return self.core.models()

    async def status(self) -> dict[str, Any]:
        return self.core.status()

    async def aclose(self) -> None:
        return None


# ---------------------------------------------------------------------- wire format
def search_to_json(result: SearchResult) -> dict[str, Any]:
    return {
        "hits": [hit.to_dict() for hit in result.hits],
        "model_fingerprint": result.model_fingerprint,
    }


def search_from_json(data: dict[str, Any]) -> SearchResult:
    return SearchResult([Hit(**hit) for hit in data["hits"]], data["model_fingerprint"])


def classify_to_json(result: ClassifyResult) -> dict[str, Any]:
    png = result.explanation_png
    return {
        "model": result.model,
        "predictions": [
            {"label": p.label, "probability": p.probability} for p in result.predictions
        ],
        "explanation_png_base64": base64.b64encode(png).decode() if png else None,
    }


def classify_from_json(data: dict[str, Any]) -> ClassifyResult:
    png = data.get("explanation_png_base64")
    return ClassifyResult(
        data["model"],
        [Prediction(p["label"], float(p["probability"])) for p in data["predictions"]],
        base64.b64decode(png) if png else None,
    )


class RemoteBackend:
    """`rsir worker` over its internal HTTP API (see docs/service.md)."""

    def __init__(self, base_url: str, api_key: str | None, timeout: float = 120.0) -> None:
        headers = {"X-API-Key": api_key} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self.client = httpx.AsyncClient(
            base_url=self.base_url + INTERNAL_PREFIX, headers=headers, timeout=timeout
        )

    async def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self.client.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            raise NotReadyError(f"worker at {self.base_url} is unreachable: {exc}") from None
        if response.status_code >= 400:
            try:
                detail = str(response.json()["detail"])
            except Exception:
                detail = response.text or response.reason_phrase
            raise ServiceError(detail, response.status_code)
        return response

    @staticmethod
    def _params(**values: Any) -> dict[str, Any]:
        return {k: v for k, v in values.items() if v is not None}

    @classmethod
    def _options(cls, options: SearchOptions) -> dict[str, Any]:
        """The search options as the worker's query parameters (feedback comma-separated)."""
        params = cls._params(k=options.k, label=options.label)
        if options.feedback:
            params["relevant"] = ",".join(map(str, options.feedback.relevant))
            params["not_relevant"] = ",".join(map(str, options.feedback.not_relevant))
        return params

    async def search(
        self, data: bytes, image: Image.Image, options: SearchOptions, bbox: BBox | None = None
    ) -> SearchResult:
        area = ",".join(map(repr, bbox.as_list())) if bbox is not None else None
        params = self._options(options) | self._params(bbox=area)
        response = await self._request("POST", "/search", params=params, content=data)
        return search_from_json(response.json())

    async def similar(self, image_id: int, options: SearchOptions) -> SearchResult:
        params = self._options(options)
        response = await self._request("GET", f"/images/{image_id}/similar", params=params)
        return search_from_json(response.json())

    async def explain(self, data: bytes, image: Image.Image) -> bytes:
        return (await self._request("POST", "/explain", content=data)).content

    async def classify(
        self, data: bytes, image: Image.Image, model: str | None, top_k: int, explain: bool
    ) -> ClassifyResult:
        params = self._params(model=model, top_k=top_k, explain=str(explain).lower())
        response = await self._request("POST", "/classify", params=params, content=data)
        return classify_from_json(response.json())

    async def remove_image(self, image_id: int) -> int:
        response = await self._request("DELETE", f"/images/{image_id}")
        return int(response.json()["removed"])

    async def models(self) -> list[ModelInfo]:
        response = await self._request("GET", "/models")
        return [ModelInfo(**item) for item in response.json()["models"]]

    async def status(self) -> dict[str, Any]:
        return dict((await self._request("GET", "/status")).json())

    async def aclose(self) -> None:
        await self.client.aclose()
