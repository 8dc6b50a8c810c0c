"""What an offer asks for, resolved before any peer connection exists: the source (a configured
name, or a file inside MEDIA_DIR) and the loaded model."""

from __future__ import annotations

import asyncio
from typing import Optional

from api.deps import Services
from api.errors import ApiError
from detectors import ModelEntry, ModelLoadError
from sources import SourceError, SourceSpec
from sources.av_source import probe
from sources.media import MediaPathError, resolve_media_path


async def choose_source(services: Services, source: Optional[str], video_path: Optional[str]) -> SourceSpec:
    if source is not None and video_path is not None:
        raise ApiError(400, "Give either source or video_path, not both.", "bad_offer")
    if source is not None:
        if not source:
            raise ApiError(400, "source must not be empty.", "bad_offer")
        spec = services.sources.get(source)
        if spec is None:
            raise ApiError(404, f"Unknown source {source!r}.", "not_found")
        return spec
    if video_path is not None:
        media_dir = services.settings.media_dir
        try:
            path = resolve_media_path(video_path, media_dir)
        except MediaPathError as exc:
            raise ApiError(exc.status, exc.detail, "bad_offer" if exc.status == 400 else "not_found") from None
        try:
            await asyncio.to_thread(probe, path)  # decoding is blocking work
        except SourceError as exc:
            raise ApiError(422, f"{exc}.", "undecodable_media") from None
        return SourceSpec(name=f"file:{path.relative_to(media_dir).as_posix()}", kind="file", path=path)
    return services.sources["default"]


async def choose_model(services: Services, name: Optional[str], spec: Optional[SourceSpec]) -> tuple[ModelEntry, str]:
    """The loaded model for this offer, and the notice to draw when a configured model fell back.

    An offer's own `model` must load (else 409); the source's or the default model falls back
    to `none` with a notice on the video."""
    registry = services.models
    if name is not None:
        if name not in registry:
            raise ApiError(400, f"Unknown model {name!r}; choose one of {registry.names()}.", "bad_offer")
        if registry.ready(name) is None:  # loading reads files: off the loop (else no thread hop)
            try:
                await asyncio.to_thread(registry.load, name)
            except ModelLoadError as exc:
                raise ApiError(409, f"{exc}.", "model_unavailable") from None
        return registry.entries[name], ""
    default = (spec.model if spec else None) or services.settings.DEFAULT_MODEL
    if (entry := registry.ready(default)) is not None:
        return entry, ""
    return await asyncio.to_thread(registry.load_or_fallback, default)
