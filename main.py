"""VisionGuard: the FastAPI app, its lifespan, CORS, error handlers and `/ /health /info`.

`python main.py` serves it with uvicorn in one process; `uvicorn main:app` works too.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal, Optional

import cv2
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from catalog import router as catalog_router
from config import APP_NAME, APP_VERSION, InvalidSettings, Settings, get_settings, load_settings
from detectors import ModelLoadError, ModelRegistry
from model import EncodeSettings
from pipelines import PipelineHub
from rtc import restrict_host_addresses
from sessions import SessionManager
from signaling import router
from redact import install_log_redaction
from sources.spec import SourceSpec, default_source, parse_source

log = logging.getLogger("visionguard")

STATIC_DIR = Path(__file__).resolve().parent / "static"


# -- response models ------------------------------------------------------------
class RootResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "service": APP_NAME, "version": APP_VERSION, "status": "running",
        "endpoints": {"demo": "/demo", "docs": "/docs", "redoc": "/redoc", "openapi": "/openapi.json", "health": "/health",
                      "info": "/info", "api": {"offer": "/api/offer", "sessions": "/api/sessions"}}}]})

    service: str
    version: str
    status: Literal["running"] = "running"
    endpoints: dict


class SourceStatus(BaseModel):
    name: str = Field(description="Source name")
    kind: str = Field(description='"synthetic", "file", "rtsp" or "device"')
    detail: str = Field(description="File name, URL (credentials as ***), device, or 'built-in synthetic pattern'")


class HealthResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "status": "healthy", "service": APP_NAME, "version": APP_VERSION, "video_available": True,
        "source": {"name": "default", "kind": "synthetic", "detail": "built-in synthetic pattern"},
        "problems": [], "active_sessions": 0}]})

    status: Literal["healthy", "degraded"]
    service: str
    version: str
    video_available: bool = Field(description="The default source can produce video")
    source: SourceStatus = Field(description="The active default source")
    problems: list[str] = Field(description="What makes the service degraded (empty when healthy)")
    active_sessions: int


class InfoResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "application": {"name": APP_NAME, "version": APP_VERSION},
        "video": {"path": None, "exists": False, "source": "synthetic", "target_fps": 30, "resolution": "640x480"},
        "webrtc": {"stun_servers": [], "turn_servers": [], "ice_host_addresses": ["127.0.0.1"]},
        "sessions": {"active": 0, "peer_connections": 0, "max": 100},
        "pipelines": {"captures_started": 0, "pipelines_started": 0, "captures": [], "pipelines": []}}]})

    application: dict
    video: dict
    webrtc: dict
    sessions: dict
    pipelines: dict = Field(description="Live captures and pipelines with their counters")


# -- app ---------------------------------------------------------------------------
def create_app(settings: Optional[Settings] = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        _logging(settings)
        restrict_host_addresses(settings.ICE_HOST_ADDRESSES)
        await load_default_model(app)
        app.state.sessions.start()
        await start_always_on(app)
        print_banner(settings, app.state.sources["default"])
        yield
        await app.state.sessions.close_all()
        await asyncio.to_thread(app.state.hub.stop_all)
        log.info("shut down: every session closed, every pipeline stopped")

    app = FastAPI(
        title=APP_NAME, version=APP_VERSION, lifespan=lifespan,
        description="Real-time AI video processing, streamed to browsers over WebRTC. "
                    "Post an SDP offer to `/api/offer`; the answer carries a `session_id`.",
    )
    app.state.settings = settings
    app.state.sources = configured_sources(settings)
    cv2.setNumThreads(settings.CV2_THREADS)  # OpenCV's own pool would fight the pipeline threads
    app.state.models = ModelRegistry(settings.DETECTION_THRESHOLD, settings.MODEL_PATH, settings.MODEL_LABELS,
                                     settings.ORT_THREADS)
    app.state.default_model = settings.DEFAULT_MODEL
    app.state.model_notice = ""
    if settings.DEFAULT_MODEL not in app.state.models:
        raise InvalidSettings(f"Invalid setting DEFAULT_MODEL: unknown model {settings.DEFAULT_MODEL!r}; "
                              f"choose one of {app.state.models.names()}")
    for spec in app.state.sources.values():
        if spec.model is not None and spec.model not in app.state.models:
            raise InvalidSettings(f"Invalid setting SOURCES: source {spec.name!r} names unknown model {spec.model!r}")
    app.state.hub = PipelineHub(settings.DEFAULT_WIDTH, settings.DEFAULT_HEIGHT, settings.TARGET_FPS,
                                settings.RTSP_OPEN_TIMEOUT_S, settings.RTSP_STALL_TIMEOUT_S,
                                settings.RTSP_RECONNECT_MAX_S,
                                EncodeSettings(settings.VIDEO_BITRATE, settings.KEYFRAME_INTERVAL))
    app.state.sessions = SessionManager(settings.MAX_SESSIONS, settings.CONNECT_TIMEOUT,
                                        settings.PEER_INACTIVITY_TIMEOUT)

    app.add_middleware(BodySizeLimit, max_bytes=settings.MAX_BODY_BYTES)
    app.add_middleware(
        CORSMiddleware, allow_origins=settings.CORS_ORIGINS, allow_methods=["*"], allow_headers=["*"],
        allow_credentials="*" not in settings.CORS_ORIGINS)
    _add_error_handlers(app)
    app.include_router(router)
    app.include_router(catalog_router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    _add_root_routes(app)
    return app


def configured_sources(settings: Settings) -> dict[str, SourceSpec]:
    """`default` (VIDEO_FILE_PATH) plus every SOURCES entry, by name."""
    sources = {"default": default_source(settings.VIDEO_FILE_PATH, settings.media_dir)}
    for name, cfg in settings.SOURCES.items():
        try:
            sources[name] = parse_source(name, cfg.url, settings.media_dir, cfg.fps, cfg.model, cfg.always_on)
        except ValueError as exc:
            raise InvalidSettings(f"Invalid setting SOURCES: {exc}") from None
    return sources


async def start_always_on(app: FastAPI) -> None:
    """Sources with `always_on` run from start-up, with or without viewers."""
    for spec in app.state.sources.values():
        if spec.always_on:
            entry, notice = await asyncio.to_thread(app.state.models.load_or_fallback,
                                                    spec.model or app.state.settings.DEFAULT_MODEL)
            app.state.hub.hold(spec, entry, notice)


async def load_default_model(app: FastAPI) -> None:
    """Load DEFAULT_MODEL before serving; if it cannot load, fall back to `none` with a notice."""
    name = app.state.settings.DEFAULT_MODEL
    try:
        await asyncio.to_thread(app.state.models.load, name)
    except ModelLoadError as exc:
        log.error("%s; falling back to model 'none'", exc)
        app.state.default_model = "none"
        app.state.model_notice = f"model {name} unavailable"


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's list of schema errors; bodies that are not JSON land here too.
        return JSONResponse({"detail": _jsonable_errors(exc.errors())}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "Internal server error; see the server log."}, status_code=500)


def _jsonable_errors(errors) -> list:
    out = []
    for e in errors:
        e = dict(e)
        e.pop("ctx", None)  # may hold exception objects
        if isinstance(e.get("input"), (bytes, bytearray)):
            e["input"] = e["input"][:200].decode("utf-8", "replace")
        out.append(e)
    return out


def _add_root_routes(app: FastAPI) -> None:
    @app.get("/", response_model=RootResponse, tags=["service"], summary="API information")
    async def root() -> RootResponse:
        return RootResponse(service=APP_NAME, version=APP_VERSION, endpoints={
            "demo": "/demo", "docs": "/docs", "redoc": "/redoc", "openapi": "/openapi.json",
            "health": "/health", "info": "/info",
            "api": {"offer": "/api/offer", "sessions": "/api/sessions", "session": "/api/session/{session_id}",
                    "health": "/api/health", "models": "/api/models", "sources": "/api/sources",
                    "ice_servers": "/api/ice-servers"}})

    @app.get("/demo", tags=["service"], summary="The demo page", response_class=FileResponse)
    async def demo() -> FileResponse:
        """A browser page that connects to this server: pick a source and a model, or send your
        own camera, and watch the annotated video with its detections and live stats."""
        return FileResponse(STATIC_DIR / "demo.html", headers={"Cache-Control": "no-cache"})

    @app.get("/health", response_model=HealthResponse, tags=["service"], summary="Health check")
    async def health(request: Request) -> HealthResponse:
        s: Settings = request.app.state.settings
        spec = request.app.state.sources["default"]
        problems = []
        if s.VIDEO_FILE_PATH and s.VIDEO_FILE_PATH != "synthetic" and spec.kind == "synthetic":
            problems.append(f"VIDEO_FILE_PATH {s.VIDEO_FILE_PATH!r} was not found; "
                            "streaming the synthetic source instead.")
        if request.app.state.model_notice:
            entry = request.app.state.models.entries[s.DEFAULT_MODEL]
            problems.append(f"DEFAULT_MODEL {s.DEFAULT_MODEL!r} failed to load ({entry.error}); "
                            "sources use 'none'.")
        for cap in request.app.state.hub.stats()["captures"]:
            if cap["state"] in ("reconnecting", "failed"):
                problems.append(f"Source {cap['source']} is {cap['state']}: {cap['last_error']}")
        return HealthResponse(
            status="degraded" if problems else "healthy", service=APP_NAME, version=APP_VERSION,
            video_available=_video_available(request.app.state.hub, spec), source=_source_status(spec),
            problems=problems,
            active_sessions=len(request.app.state.sessions.sessions))

    @app.get("/info", response_model=InfoResponse, tags=["service"], summary="Service configuration and counters")
    async def info(request: Request) -> InfoResponse:
        s: Settings = request.app.state.settings
        spec = request.app.state.sources["default"]
        sessions: SessionManager = request.app.state.sessions
        return InfoResponse(
            application={"name": APP_NAME, "version": APP_VERSION},
            video={"path": s.VIDEO_FILE_PATH, "exists": spec.kind == "file", "source": spec.kind,
                   "target_fps": s.TARGET_FPS, "resolution": f"{s.DEFAULT_WIDTH}x{s.DEFAULT_HEIGHT}"},
            webrtc={"stun_servers": [x.model_dump(exclude_none=True) for x in s.STUN_SERVERS],
                    "turn_servers": [{"urls": t.urls} for t in s.TURN_SERVERS],  # no credentials here
                    "ice_host_addresses": s.ICE_HOST_ADDRESSES},
            sessions={"active": len(sessions.sessions), "peer_connections": len(sessions.peer_connections),
                      "max": s.MAX_SESSIONS, "closed": sessions.closed_reasons},
            pipelines=request.app.state.hub.stats())


def _source_status(spec) -> SourceStatus:
    detail = "built-in synthetic pattern" if spec.kind == "synthetic" else spec.display
    return SourceStatus(name=spec.name, kind=spec.kind, detail=detail)


def _video_available(hub: PipelineHub, spec) -> bool:
    """False only while the default source is known to be down."""
    capture = hub.capture_for(spec.name)
    return capture is None or capture.state not in ("failed", "reconnecting")


class BodySizeLimit:
    """Refuse request bodies over `max_bytes` with 413, by header or by counting the stream."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._too_large(send)
        seen = 0
        refused = False

        async def limited_receive():
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes and not refused:
                    refused = True
                    await self._too_large(send)
                    return {"type": "http.disconnect"}  # the app stops reading
            return message

        async def guarded_send(message):
            if not refused:  # after our 413 the app's own reply goes nowhere
                await send(message)

        await self.app(scope, limited_receive, guarded_send)

    async def _too_large(self, send) -> None:
        response = JSONResponse({"detail": f"Request body is larger than {self.max_bytes} bytes."}, status_code=413)
        await response({"type": "http"}, None, send)


def print_banner(settings: Settings, spec) -> None:
    host = "localhost" if settings.SERVER_HOST in ("0.0.0.0", "::") else settings.SERVER_HOST
    scheme = "https" if settings.SSL_CERTFILE else "http"
    base = f"{scheme}://{host}:{settings.SERVER_PORT}"
    line = "=" * 70
    if spec.kind == "file":
        video = f"✓ Video file found: {spec.path.name}"
    elif settings.VIDEO_FILE_PATH and settings.VIDEO_FILE_PATH != "synthetic":
        video = f"⚠ Video file not found: {settings.VIDEO_FILE_PATH} (streaming the built-in synthetic source)"
    else:
        video = "✓ No VIDEO_FILE_PATH set: streaming the built-in synthetic source"
    cors = ("✓ CORS: Allowing all origins (development mode)" if "*" in settings.CORS_ORIGINS
            else f"✓ CORS: Allowing {', '.join(settings.CORS_ORIGINS)}")
    print("\n".join([
        line, f"Starting {APP_NAME} v{APP_VERSION}", line, video, cors,
        f"✓ Demo:     {base}/demo", f"✓ API docs: {base}/docs", f"✓ Health:   {base}/health",
        "✓ Application started successfully", line]), flush=True)


def _logging(settings: Settings) -> None:
    logging.basicConfig(level=logging.DEBUG if settings.DEBUG_MODE else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    install_log_redaction()
    if not settings.DEBUG_MODE:  # aiortc/aioice are chatty at INFO
        for name in ("aiortc", "aioice"):
            logging.getLogger(name).setLevel(logging.WARNING)


app = create_app()


def main() -> None:
    import uvicorn

    settings = load_settings()
    uvicorn.run(
        app, host=settings.SERVER_HOST, port=settings.SERVER_PORT,
        log_level="debug" if settings.DEBUG_MODE else "info",
        ssl_certfile=str(settings.SSL_CERTFILE) if settings.SSL_CERTFILE else None,
        ssl_keyfile=str(settings.SSL_KEYFILE) if settings.SSL_KEYFILE else None)


if __name__ == "__main__":
    try:
        main()
    except SystemExit as exc:
        if exc.code and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
            sys.exit(2)
        raise
