"""The `/api` routes that describe what can be asked for: models, sources (with a snapshot of
each) and the ICE servers a browser should use."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Literal, Optional
from urllib.parse import quote

import cv2
from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

from api.auth import AUTH_ERRORS, MediaViewerDep, ViewerDep
from api.deps import Services, ServicesDep, SettingsDep
from api.errors import ApiError, error_responses
from cluster.connection import ClusterDown
from core.redact import redact
from webrtc.turn import with_credentials

router = APIRouter(prefix="/api", tags=["catalog"])

SNAPSHOT_WAIT_S = 10.0


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
            {"name": "yolo", "type": "detector", "state": "error", "error": "needs MODEL_PATH",
             "mean_inference_ms": None, "labels": []}]}]})

    default: str
    models: list[ModelInfo]


@router.get("/models", response_model=ModelsResponse, summary="The models and their state",
            responses=error_responses(AUTH_ERRORS))
async def list_models(services: ServicesDep, caller: ViewerDep) -> ModelsResponse:
    """Every model by name: `ready` (loaded), `error` (failed to load, or cannot: `yolo` without
    MODEL_PATH says `needs MODEL_PATH`; `error` says why) or
    `not_loaded` (loads on first use), and its mean inference time. `default` is the model
    used when an offer names none (`none` if DEFAULT_MODEL failed to load)."""
    return ModelsResponse(default=services.default_model, models=services.models.info())


class SourceInfo(BaseModel):
    name: str
    kind: str = Field(description="synthetic, file, rtsp, device or camera")
    url: str = Field(description="What it reads: file name, URL with credentials as ***, device:N")
    state: Literal["idle", "live", "reconnecting", "failed"]
    width: Optional[int] = Field(description="The source's own frame size, once seen")
    height: Optional[int]
    fps: float = Field(description="Measured frames per second read from the source")
    processed_fps: float = Field(0.0, description="Frames per second the model processes (the busiest pipeline "
                                 "of this source; 0 while idle)")
    mean_inference_ms: Optional[float] = Field(None, description="That pipeline's mean inference time per frame")
    viewers: int
    persons: Optional[int] = Field(None, description="`person` detections in the newest processed frame of that "
                                   "pipeline (None while idle, before its first frame, or if its model finds no persons)")
    model: str = Field(description="The model used when an offer names none")
    always_on: bool
    last_error: Optional[str]
    snapshot_url: Optional[str] = Field(None, description="The source's snapshot, ready for an <img>: signed for "
                                        "the caller when AUTH_MODE=jwt (valid SIGNED_URL_TTL_S); None for `file:` sources")


class SourcesResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"sources": [
        {"name": "default", "kind": "file", "url": "vtest.avi", "state": "live", "width": 768, "height": 576,
         "fps": 10.0, "processed_fps": 10.0, "mean_inference_ms": 17.8, "viewers": 2, "persons": 3, "model": "person",
         "always_on": False, "last_error": None,
         "snapshot_url": "/api/sources/default/snapshot.jpg?exp=1764417600&sub=alice&sig=Zm9v"},
        {"name": "lobby", "kind": "rtsp", "url": "rtsp://***@10.0.0.5/stream", "state": "reconnecting",
         "width": 1280, "height": 720, "fps": 0.0, "processed_fps": 0.0, "mean_inference_ms": 18.2, "viewers": 1,
         "persons": 0, "model": "person", "always_on": True,
         "last_error": "cannot read rtsp://***@10.0.0.5/stream: Connection refused",
         "snapshot_url": "/api/sources/lobby/snapshot.jpg"}]}]})

    sources: list[SourceInfo]


class IceServersResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"iceServers": [
        {"urls": "stun:stun.l.google.com:19302"},
        {"urls": "turn:turn.example.com:3478", "username": "1767225600:alice",
         "credential": "kGx0dH1zTbAfrFn9Cq5N4n1sKV8="}]}]})

    iceServers: list[dict] = Field(description="RTCIceServer objects: urls, and username + credential for TURN")


def snapshot_url(services: Services, source: str, subject: str) -> str:
    """The snapshot's path, signed for `subject` when access control is on."""
    path = f"/api/sources/{quote(source, safe='')}/snapshot.jpg"
    return services.signer.sign(path, subject)[0] if services.tokens is not None else path


def _source_info(services: Services, spec, snapshot: Optional[str]) -> SourceInfo:
    hub, default_model = services.hub, services.default_model
    capture = hub.capture_for(spec.name)
    pipelines = hub.pipelines_for(spec.name)
    size = capture.native_size if capture else None
    busiest = max(pipelines, key=lambda p: p.viewers, default=None)  # the one most viewers see
    return SourceInfo(
        name=spec.name, kind=spec.kind, url=spec.display,
        state=capture.state if capture else "idle",
        width=size[0] if size else None, height=size[1] if size else None,
        fps=round(capture.measured_fps, 2) if capture else 0.0,
        processed_fps=round(busiest.stage.rate.rate, 2) if busiest else 0.0,
        mean_inference_ms=round(busiest.stage.inference_ms, 2) if busiest and busiest.stage.frames_processed else None,
        viewers=sum(p.viewers - p.held for p in pipelines), persons=_persons(services, busiest),
        model=spec.model or default_model, always_on=spec.always_on,
        last_error=redact(error) if (error := hub.source_error(spec.name)) else None, snapshot_url=snapshot)


def _persons(services: Services, pipeline) -> Optional[int]:
    """`person` detections in the pipeline's newest result; None if its model finds no persons."""
    entry = services.models.entries.get(pipeline.model) if pipeline is not None else None
    if entry is None or "person" not in entry.labels:
        return None
    processed = pipeline.stage.results.peek()[1]
    return sum(d.label == "person" for d in processed.detections) if processed is not None else None


@router.get("/sources", response_model=SourcesResponse, summary="The sources and their state",
            responses=error_responses(AUTH_ERRORS))
async def list_sources(services: ServicesDep, caller: ViewerDep) -> SourcesResponse:
    """Every configured source (`default` and SOURCES), plus files opened through `video_path`
    while they play: state (`idle` no pipeline, `live`, `reconnecting` was live and is trying
    again, `failed` could not open yet and is trying again), the source's own resolution, the
    measured fps, viewers and last error (kept, also while idle, until the source is live
    again). Credentials in URLs are shown as `***`."""
    hub = services.hub
    specs = dict(services.sources)
    for stats in hub.stats()["captures"]:
        capture = hub.capture_for(stats["source"])
        if capture is not None and capture.spec.kind == "file" and capture.spec.name not in specs:
            specs[capture.spec.name] = capture.spec
    try:  # the sources other nodes of the cluster run, as their owners describe them
        elsewhere = await services.cluster.registry.source_states()
    except ClusterDown:
        elsewhere = {}
    listed = []
    for name, spec in specs.items():
        snapshot = None if spec.kind == "file" and name.startswith("file:") else snapshot_url(services, name, caller.subject)
        if hub.capture_for(name) is None and name in elsewhere:
            listed.append(SourceInfo(**{**elsewhere[name], "snapshot_url": snapshot}))
        else:
            listed.append(_source_info(services, spec, snapshot))
    return SourcesResponse(sources=listed)


@router.get("/sources/{name}/snapshot.jpg", summary="The latest processed frame of a source",
            response_class=Response,
            responses={200: {"content": {"image/jpeg": {}}, "description": "JPEG image"},
                       **error_responses({401: "No valid bearer token or signed URL (AUTH_MODE=jwt)",
                                          403: "The token lacks the `view` scope", 404: "Unknown source",
                                          503: "The source has no frame yet (see its last_error; "
                                               "code `source_unavailable`)"})})
async def snapshot(services: ServicesDep, name: str, caller: MediaViewerDep) -> Response:
    """The newest processed frame (boxes and status band drawn) as JPEG. With AUTH_MODE=jwt it
    takes a bearer token or a signed URL (`snapshot_url` in `/api/sources`, or `POST
    /api/signed-url`), so that an `<img>` can load it. A source with no
    viewer is started for the snapshot and kept running `SNAPSHOT_LINGER_S` after its last
    snapshot (a console refreshing it does not restart it each time). A source that cannot be
    opened answers 503 with its error as soon as that is known."""
    spec = services.sources.get(name)
    if spec is None:
        raise ApiError(404, f"Unknown source {name!r}.", "not_found")
    owner = await services.cluster.owner_for(name)
    if owner is not None:  # another node runs it: never open the source a second time here
        reply = await services.cluster.ask(owner, "snapshot", {"name": name})
        jpeg = base64.b64decode(reply["jpeg"])
    else:
        jpeg = await _snapshot_here(services, spec)
    return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "no-store"})


async def _snapshot_here(services: Services, spec) -> bytes:
    hub, name = services.hub, spec.name
    entry, notice = await asyncio.to_thread(services.models.load_or_fallback,
                                            spec.model or services.settings.DEFAULT_MODEL)
    pipeline = hub.acquire(spec, entry, notice)
    try:
        deadline = time.monotonic() + SNAPSHOT_WAIT_S
        while (image := pipeline.latest_image()) is None and time.monotonic() < deadline:
            if pipeline.capture.state == "failed" and pipeline.capture.last_error:
                break  # it could not be opened: say so now (it keeps trying while it lingers)
            await asyncio.sleep(0.05)
    finally:
        await hub.release(pipeline, services.settings.SNAPSHOT_LINGER_S)
    if image is None:
        capture_error = pipeline.capture.last_error
        raise ApiError(503, f"Source {name!r} has no frame yet" + (f": {capture_error}" if capture_error else "."),
                       "source_unavailable")
    ok, jpeg = await asyncio.to_thread(cv2.imencode, ".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])
    return jpeg.tobytes()


def cluster_handlers(services: Services) -> dict:
    """What this module answers for other nodes, and how this node describes the sources it runs."""

    async def snap(payload: dict) -> dict:
        spec = services.sources.get(payload["name"])
        if spec is None:
            raise ApiError(404, f"Unknown source {payload['name']!r}.", "not_found")
        if await services.cluster.owner_for(spec.name, hops=1) is not None:
            raise ApiError(503, f"Source {spec.name!r} is changing hands; try again.", "cluster_unavailable",
                           headers={"Retry-After": "1"})
        return {"jpeg": base64.b64encode(await _snapshot_here(services, spec)).decode()}

    def describe(name: str) -> Optional[dict]:
        spec = services.sources.get(name)
        return _source_info(services, spec, None).model_dump() if spec is not None else None

    services.cluster.describe = describe
    return {"snapshot": snap}


@router.get("/ice-servers", response_model=IceServersResponse, summary="ICE servers for the browser",
            responses=error_responses(AUTH_ERRORS))
async def ice_servers(settings: SettingsDep, caller: ViewerDep, response: Response) -> IceServersResponse:
    """The configured STUN and TURN servers, ready for `new RTCPeerConnection(...)`. This is the
    one place TURN credentials are shown: browsers need them.

    With `TURN_SECRET` set (coturn's `static-auth-secret`), each TURN server configured without
    a username and credential gets **time-limited credentials for this caller** (coturn's REST-API
    scheme): `username` = `<expiry unix s>:<subject>`, `credential` =
    base64(HMAC-SHA1(TURN_SECRET, username)), valid `TURN_TTL_S` seconds (a connection set up
    before the expiry keeps its relay). Ask again before setting up a new connection.
    TURN servers configured with a username and credential keep them (static)."""
    response.headers["Cache-Control"] = "no-store"
    return IceServersResponse(iceServers=with_credentials(
        settings.ice_servers, settings.TURN_SECRET, settings.TURN_TTL_S, caller.subject))
