"""The `/api` routes that describe what can be asked for: models."""

from __future__ import annotations

from typing import Literal, Optional

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict

router = APIRouter(prefix="/api", tags=["catalog"])


class ModelInfo(BaseModel):
    name: str
    type: str
    state: Literal["ready", "error", "not_loaded"]
    error: Optional[str]
    mean_inference_ms: Optional[float]
    labels: list[str]


class ModelsResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "default": "person",
        "models": [
            {"name": "none", "type": "passthrough", "state": "ready", "error": None,
             "mean_inference_ms": 0.01, "labels": []},
            {"name": "person", "type": "detector", "state": "ready", "error": None,
             "mean_inference_ms": 17.8, "labels": ["person"]},
            {"name": "yolo", "type": "detector", "state": "error", "error": "ModelLoadError: MODEL_PATH is not set",
             "mean_inference_ms": None, "labels": []}]}]})

    default: str
    models: list[ModelInfo]


@router.get("/models", response_model=ModelsResponse, summary="The models and their state")
async def list_models(request: Request) -> ModelsResponse:
    """Every model by name: `ready` (loaded), `error` (failed to load, with why) or
    `not_loaded` (loads on first use), and its mean inference time. `default` is the model
    used when an offer names none (`none` if DEFAULT_MODEL failed to load)."""
    state = request.app.state
    return ModelsResponse(default=state.default_model, models=state.models.info())
