"""Scene classification: POST /classify, and GET /models (every loaded model)."""

from __future__ import annotations

import base64
import time
from typing import Annotated

from fastapi import APIRouter, Form

from service.deps import BackendDep, ImageDep
from service.schemas import ClassifyResponse, ModelOut, ModelsResponse, PredictionOut

router = APIRouter(tags=["classification"])


@router.post("/classify", response_model=ClassifyResponse)
async def classify(
    backend: BackendDep,
    upload: ImageDep,
    model: Annotated[str | None, Form(description="Classifier name (GET /models).")] = None,
    top_k: Annotated[int, Form(ge=1, le=1000)] = 5,
    explain: Annotated[bool, Form(description="Include the attention or CAM map.")] = False,
) -> ClassifyResponse:
    """Top-k class probabilities of the uploaded image from one classifier."""
    started = time.perf_counter()
    result = await backend.classify(upload.data, upload.image, model or None, top_k, explain)
    png = result.explanation_png
    return ClassifyResponse(
        model=result.model,
        predictions=[
            PredictionOut(label=p.label, probability=p.probability) for p in result.predictions
        ],
        took_ms=round((time.perf_counter() - started) * 1000.0, 3),
        explanation_png_base64=base64.b64encode(png).decode() if png else None,
    )


@router.get("/models", response_model=ModelsResponse)
async def models(backend: BackendDep) -> ModelsResponse:
    """Loaded models: kind, dataset, classes, fingerprint, initialisation."""
    return ModelsResponse(models=[ModelOut(**m.to_dict()) for m in await backend.models()])
