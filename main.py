"""VisionGuard: the FastAPI app, its lifespan, CORS, error handlers and `/ /health /info`.

`create_app()` builds the app (`uvicorn main:create_app --factory`); `python main.py` serves it
with uvicorn (in WORKERS processes: core/procs.py); the seed's `uvicorn main:app` works too (the
module builds `app` on first access). Importing this module defines things and does nothing else.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal, Optional

import cv2
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, ConfigDict, Field

from api.access import router as access_router
from api.auth import AUTH_ERRORS, AdminDep
from api.banner import print_banner
from api.catalog import cluster_handlers as catalog_handlers
from api.catalog import router as catalog_router
from api.cluster import ClusterService
from api.deps import Services, ServicesDep
from api.errors import error_responses, install_error_handlers
from api.events import cluster_handlers as event_handlers
from api.events import router as events_router
from api.health import problems as health_problems
from api.metrics import CountOffers, install_collector
from api.metrics import router as metrics_router
from api.middleware import BodySizeLimit, NodeHeader
from api.recording_control import RecordingControl
from api.recordings import cluster_handlers as recording_handlers
from api.recordings import router as recordings_router
from api.tokens import KeyFileError, TokenVerifier, UrlSigner
from cluster.eventlog import EventLog
from compat.aiortc import self_check, share_dtls_certificate, use_lean_rate_counters
from compat.asgi import install as add_connection_extensions
from compat.asgi import self_check as check_asgi
from compat.uvicorn import install as limit_connections
from compat.uvicorn import self_check as check_uvicorn
from config import APP_NAME, APP_VERSION, InvalidSettings, Settings, check_port, get_settings, load_settings
from core.gcpause import freeze_startup_heap, thaw
from core.looplag import LoopLag
from core.metrics import Metrics
from core.procs import empty_given_dir, serve
from core.redact import install_log_redaction, public, register_secrets, register_server_paths
from detectors import ModelLoadError, ModelRegistry
from events import EventService, EventStore
from hub import PipelineHub
from pipeline.encoders import EncodeSettings
from signaling import cluster_handlers as signaling_handlers
from signaling import router
from sources.spec import SourceSpec, default_source, display_name, parse_source
from webrtc.ice import check_host_addresses, restrict_host_addresses
from webrtc.sessions import SessionManager

log = logging.getLogger("visionguard")

STATIC_DIR = Path(__file__).resolve().parent / "static"
DOCS_ASSETS = "/static/docs-ui"  # Swagger UI's and ReDoc's files (fastapi-offline), open like /static


# -- response models ------------------------------------------------------------
class RootResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "service": APP_NAME, "version": APP_VERSION, "status": "running",
        "endpoints": {"demo": "/demo", "console": "/console", "docs": "/docs", "redoc": "/redoc",
                      "openapi": "/openapi.json", "health": "/health", "info": "/info",
                      "api": {"offer": "/api/offer", "sessions": "/api/sessions"}}}]})

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
    cluster: Optional[dict] = Field(None, description='With REDIS_URL: `{redis: "ok"|"down", node_id, workers}`')


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
    events: dict = Field(default_factory=dict, description="The event log: kept, dropped, next id, subscribers")
    cluster: Optional[dict] = Field(None, description="With REDIS_URL: this node, the leases it holds, hand-offs served")


# -- app ---------------------------------------------------------------------------
def create_app(settings: Optional[Settings] = None) -> FastAPI:
    """Build the app (`uvicorn main:create_app --factory`). Nothing starts until its lifespan."""
    self_check()  # aiortc's internals we rely on are there, or start-up stops with one line
    use_lean_rate_counters()  # each peer connection's receiver: 1000 fewer objects for the GC
    share_dtls_certificate()  # one DTLS certificate for the process, not one per offer
    check_uvicorn()  # so are uvicorn's (the connection limits below)
    check_asgi()  # and those behind the event stream's abort
    settings = settings or get_settings()
    cv2.setNumThreads(settings.CV2_THREADS)  # OpenCV's own pool would fight the pipeline threads
    services = build_services(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        _logging(settings)
        restrict_host_addresses(settings.ICE_HOST_ADDRESSES)  # checked in build_services
        await load_default_model(services)
        # before any pipeline, session or recorder exists: what is frozen lives as long as the app
        freeze_startup_heap()
        try:
            services.loop_lag.start()
            services.metrics.start()  # several workers: this one's gauges, kept fresh for the node's /metrics
            services.sessions.start()
            await services.events.start()  # reloads EVENTS_FILE; follows pipelines from here
            await services.cluster.start()  # REDIS_URL: joins the cluster (Redis may be down: it keeps trying)
            await services.cluster.claim_always_on()  # (in a cluster, those no other node runs)
            await services.recordings.start()  # after always_on: `record: true` sources are recorded
            # on the uvicorn server running this app, however it was started (doc/SECURITY.md)
            connections = limit_connections(settings.HEADER_TIMEOUT_S, settings.MAX_CONNECTIONS_PER_IP)
            print_banner(settings, services.sources["default"])
        except BaseException:
            thaw()  # a start-up that failed holds no freeze (it is counted: core/gcpause.py)
            raise
        try:
            yield
        finally:
            thaw()  # a stopped app can be collected (tests, embedding)
        await services.sessions.close_all()
        await services.events.stop()  # open visits end (person_gone), pending writes done
        await services.recordings.close()  # each file closed `done`, before the pipelines stop
        await asyncio.to_thread(services.hub.stop_all)
        await services.cluster.stop()  # leases given back once every source here is closed
        await services.loop_lag.stop()
        await services.metrics.stop()
        connections.uninstall()
        log.info("shut down: every session closed, every pipeline stopped")

    app = FastAPIOffline(  # /docs and /redoc from the package's own assets, not a CDN
        title=APP_NAME, version=APP_VERSION, lifespan=lifespan, static_url=DOCS_ASSETS,
        description="Real-time AI video processing, streamed to browsers over WebRTC. "
                    "Post an SDP offer to `/api/offer`; the answer carries a `session_id`. "
                    'Every error is JSON `{"detail": "<sentence>", "code": "<snake_case>"}`.',
    )
    app.state.services = services
    app.add_middleware(BodySizeLimit, max_bytes=settings.MAX_BODY_BYTES)
    app.add_middleware(CountOffers, counter=services.metrics.offers)  # outside the 413: it is counted too
    app.add_middleware(
        CORSMiddleware, allow_origins=settings.CORS_ORIGINS, allow_methods=["*"], allow_headers=["*"],
        allow_credentials="*" not in settings.CORS_ORIGINS)
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(catalog_router)
    app.include_router(access_router)
    app.include_router(recordings_router)
    app.include_router(metrics_router)
    app.include_router(events_router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    _add_root_routes(app)
    app.add_middleware(NodeHeader, node_id=settings.node_id)  # on every answer, errors and 413s too
    add_connection_extensions(app, settings.SHUTDOWN_GRACE_S)  # outermost: streams can abort a connection
    return app


def build_services(settings: Settings) -> Services:
    """Everything the routes share, checked against the settings (InvalidSettings if wrong)."""
    try:
        check_host_addresses(settings.ICE_HOST_ADDRESSES)  # before uvicorn: one line, not a lifespan traceback
    except ValueError as exc:
        raise InvalidSettings(f"Invalid setting ICE_HOST_ADDRESSES: {exc}") from None
    sources = configured_sources(settings)
    models = ModelRegistry(settings.DETECTION_THRESHOLD, settings.MODEL_PATH, settings.MODEL_LABELS,
                           settings.ORT_THREADS)
    if settings.DEFAULT_MODEL not in models:
        raise InvalidSettings(f"Invalid setting DEFAULT_MODEL: unknown model {settings.DEFAULT_MODEL!r}; "
                              f"choose one of {models.names()}")
    for spec in sources.values():
        if spec.model is not None and spec.model not in models:
            raise InvalidSettings(f"Invalid setting SOURCES: source {spec.name!r} names unknown model {spec.model!r}")
    metrics = Metrics()
    hub = PipelineHub(settings.DEFAULT_WIDTH, settings.DEFAULT_HEIGHT, settings.TARGET_FPS,
                      settings.RTSP_OPEN_TIMEOUT_S, settings.RTSP_STALL_TIMEOUT_S, settings.RTSP_RECONNECT_MAX_S,
                      EncodeSettings(settings.VIDEO_BITRATE, settings.KEYFRAME_INTERVAL), metrics)
    jwt_on = settings.AUTH_MODE == "jwt"
    sessions = SessionManager(settings.MAX_SESSIONS, settings.CONNECT_TIMEOUT, settings.PEER_INACTIVITY_TIMEOUT,
                              settings.MAX_SESSIONS_PER_SUBJECT if jwt_on else None)
    events = EventService(EventStore(settings.EVENTS_MAX, settings.EVENTS_FILE), settings.EVENT_HOLD_S,
                          settings.SSE_CLIENT_BUFFER, metrics, labels=lambda model: models.entries[model].labels,
                          eventlog=EventLog.open(settings.REDIS_URL, settings.node_id, settings.EVENTS_MAX)
                          if settings.REDIS_URL else None)  # a cluster: the events go through Redis
    hub.watchers.append(events.watch)
    services = Services(settings=settings, sources=sources, models=models, hub=hub, sessions=sessions,
                        metrics=metrics, loop_lag=LoopLag(metrics.loop_lag), events=events,
                        default_model=settings.DEFAULT_MODEL,
                        tokens=token_verifier(settings) if jwt_on else None,
                        signer=UrlSigner(settings.SIGNING_KEY.encode() if settings.SIGNING_KEY else None,
                                         settings.SIGNED_URL_TTL_S))
    services.recordings = RecordingControl(services)
    services.cluster = ClusterService(services)
    for handlers in (signaling_handlers(services), catalog_handlers(services), recording_handlers(services),
                     event_handlers(services)):
        for method, handler in handlers.items():
            services.cluster.serve(method, handler)
    install_collector(services)
    return services


def token_verifier(settings: Settings) -> TokenVerifier:
    try:
        return TokenVerifier(settings.JWT_ALGORITHMS, settings.JWT_SECRET, settings.JWT_PUBLIC_KEY_FILE,
                             settings.JWT_JWKS_FILE, settings.JWT_ISSUER, settings.JWT_AUDIENCE, settings.JWT_LEEWAY_S)
    except KeyFileError as exc:  # a key file that does not parse: one line naming it
        raise InvalidSettings(str(exc)) from None


def configured_sources(settings: Settings) -> dict[str, SourceSpec]:
    """`default` (VIDEO_FILE_PATH) plus every SOURCES entry, by name."""
    sources = {"default": default_source(settings.VIDEO_FILE_PATH, settings.media_dir)}
    for name, cfg in settings.SOURCES.items():
        try:
            sources[name] = parse_source(name, cfg.url, settings.media_dir, cfg.fps, cfg.model, cfg.always_on,
                                         cfg.record)
        except ValueError as exc:
            raise InvalidSettings(f"Invalid setting SOURCES: {exc}") from None
    return sources


async def load_default_model(services: Services) -> None:
    """Load DEFAULT_MODEL before serving; if it cannot load, fall back to `none` with a notice."""
    name = services.settings.DEFAULT_MODEL
    try:
        await asyncio.to_thread(services.models.load, name)
    except ModelLoadError as exc:
        log.error("%s; falling back to model 'none'", exc)
        services.default_model = "none"
        services.model_notice = f"model {name} unavailable"


def _add_root_routes(app: FastAPI) -> None:
    @app.get("/", response_model=RootResponse, tags=["service"], summary="API information")
    async def root() -> RootResponse:
        return RootResponse(service=APP_NAME, version=APP_VERSION, endpoints={
            "demo": "/demo", "console": "/console", "docs": "/docs", "redoc": "/redoc", "openapi": "/openapi.json",
            "health": "/health", "info": "/info",
            "api": {"offer": "/api/offer", "sessions": "/api/sessions", "session": "/api/session/{session_id}",
                    "health": "/api/health", "models": "/api/models", "sources": "/api/sources",
                    "ice_servers": "/api/ice-servers"}})

    @app.get("/demo", tags=["service"], summary="The demo page", response_class=FileResponse)
    async def demo() -> FileResponse:
        """A browser page that connects to this server: pick a source and a model, or send your
        own camera, and watch the annotated video with its detections and live stats."""
        return FileResponse(STATIC_DIR / "demo.html", headers={"Cache-Control": "no-cache"})

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:  # browsers ask for it by themselves: no 404 in their console
        return FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml",
                            headers={"Cache-Control": "max-age=86400"})

    @app.get("/console", tags=["service"], summary="The operator console", response_class=FileResponse)
    async def console() -> FileResponse:
        """A browser page for operators: every source as a tile (state, figures, snapshot), a
        live view of one, the events as they happen, the recordings, and the service's health."""
        return FileResponse(STATIC_DIR / "console.html", headers={"Cache-Control": "no-cache"})

    @app.get("/health", response_model=HealthResponse, tags=["service"], summary="Health check")
    async def health(services: ServicesDep) -> HealthResponse:
        """Always 200 while the process runs: read `status`. `degraded` lists its `problems`: a
        source down, a pipeline stage failing on every frame, an encoder that keeps failing, a
        thread the watchdog keeps restarting, event-loop lag p99 over 250 ms in the last minute,
        a start-up fallback (missing video file, default model that did not load), or (with
        REDIS_URL) Redis unreachable."""
        spec = services.sources["default"]
        problems = health_problems(services)
        return HealthResponse(
            status="degraded" if problems else "healthy", service=APP_NAME, version=APP_VERSION,
            video_available=_video_available(services.hub, spec), source=public(_source_status(spec).model_dump()),
            problems=public(problems), active_sessions=len(services.sessions.sessions),
            cluster=services.cluster.health())

    @app.get("/info", response_model=InfoResponse, tags=["service"], summary="Service configuration and counters",
             responses=error_responses({**AUTH_ERRORS, 403: "The token lacks the `admin` scope"}))
    async def info(services: ServicesDep, caller: AdminDep) -> InfoResponse:
        s, sessions = services.settings, services.sessions
        spec = services.sources["default"]
        return InfoResponse(
            application={"name": APP_NAME, "version": APP_VERSION},
            # what the default source is, as shown everywhere: never the raw VIDEO_FILE_PATH
            video={"path": display_name(s.VIDEO_FILE_PATH, s.media_dir), "exists": spec.kind == "file",
                   "source": spec.kind, "target_fps": s.TARGET_FPS,
                   "resolution": f"{s.DEFAULT_WIDTH}x{s.DEFAULT_HEIGHT}"},
            webrtc=public({"stun_servers": [{"urls": x.urls} for x in s.STUN_SERVERS],  # no credentials here
                           "turn_servers": [{"urls": t.urls} for t in s.TURN_SERVERS],
                           "ice_host_addresses": s.ICE_HOST_ADDRESSES}),
            sessions={"active": len(sessions.sessions), "peer_connections": len(sessions.peer_connections),
                      "max": s.MAX_SESSIONS, "closed": sessions.closed_reasons,
                      "internal_errors": services.internal_errors,
                      "camera_frames_dropped": sessions.camera_frames_dropped},
            pipelines=public(services.hub.stats()), events=services.events.stats(), cluster=services.cluster.info())


def _source_status(spec) -> SourceStatus:
    detail = "built-in synthetic pattern" if spec.kind == "synthetic" else spec.display
    return SourceStatus(name=spec.name, kind=spec.kind, detail=detail)


def _video_available(hub: PipelineHub, spec) -> bool:
    """False only while the default source is known to be down."""
    capture = hub.capture_for(spec.name)
    return capture is None or capture.state not in ("failed", "reconnecting")


def _logging(settings: Settings) -> None:
    logging.basicConfig(level=logging.DEBUG if settings.DEBUG_MODE else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # the configured secrets are masked by value in every log line, answer and the banner from here on
    register_secrets(settings.secret_values())
    register_server_paths([settings.media_dir])
    install_log_redaction()
    if not settings.DEBUG_MODE:  # aiortc/aioice are chatty at INFO
        for name in ("aiortc", "aioice"):
            logging.getLogger(name).setLevel(logging.WARNING)


def __getattr__(name: str):
    """`uvicorn main:app` (the seed's way) builds the app on first access (PEP 562), so that
    importing this module has no side effects."""
    if name == "app":
        app = globals()["app"] = create_app()
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    settings = load_settings()
    empty_given_dir()  # PROMETHEUS_MULTIPROC_DIR, if the operator set one, starts this run empty
    app = create_app(settings)  # every setting checked: one line before anything (or any worker) starts
    check_port(settings.SERVER_HOST, settings.SERVER_PORT)
    serve(app, "main:app", settings)  # one process, or WORKERS that each build `main:app` (core/procs.py)


if __name__ == "__main__":
    try:
        main()
    except SystemExit as exc:
        if exc.code and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
            sys.exit(2)
        raise
