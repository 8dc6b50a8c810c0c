"""Typed dependencies: what a route needs is visible in its signature.

The app holds one `Services` container (built by `main.create_app`); routes ask for the parts
they use, e.g. `async def route(settings: SettingsDep, sessions: SessionsDep)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Optional

from fastapi import Depends, Request

from api.tokens import TokenVerifier, UrlSigner
from config import Settings
from core.looplag import LoopLag
from core.metrics import Metrics
from detectors import ModelRegistry
from events import EventService, EventStore
from hub import PipelineHub
from sources import SourceSpec
from webrtc.sessions import SessionManager

if TYPE_CHECKING:  # they import api.errors, which imports this module
    from api.cluster import ClusterService
    from api.recording_control import RecordingControl


@dataclass
class Services:
    settings: Settings
    sources: dict[str, SourceSpec]  # configured sources by name (`default` first)
    models: ModelRegistry
    hub: PipelineHub
    sessions: SessionManager
    default_model: str  # DEFAULT_MODEL, or `none` once it failed to load
    metrics: Metrics = field(default_factory=Metrics)  # this app's Prometheus registry (api.metrics)
    loop_lag: LoopLag = field(default_factory=LoopLag)  # started by the lifespan (api.health reads it)
    model_notice: str = ""  # drawn on the video when the default model fell back
    internal_errors: int = 0  # requests answered 500 (each logged with its traceback)
    tokens: Optional[TokenVerifier] = None  # None: AUTH_MODE=off
    signer: UrlSigner = field(default_factory=UrlSigner)
    events: EventService = field(default_factory=lambda: EventService(EventStore(1000), 5.0, 100))  # person events
    recordings: Optional[RecordingControl] = None  # made by main.build_services, started by the lifespan
    cluster: Optional[ClusterService] = None  # likewise: the registry (memory or Redis) and hand-offs


def get_services(request: Request) -> Services:
    return request.app.state.services


def count_internal_error(request: Request) -> None:
    """A request was answered 500 (for /info); works before the app has its services too."""
    services = getattr(request.app.state, "services", None)
    if services is not None:
        services.internal_errors += 1


def node_id(request: Request) -> Optional[str]:
    """This worker's NODE_ID, for answers made outside the middleware (a 500); None before the app has services."""
    services = getattr(request.app.state, "services", None)
    return services.settings.node_id if services is not None else None


# The route dependencies are coroutines on purpose: FastAPI runs a plain `def` dependency in its
# thread pool, a thread hop per dependency per request (three for an offer) on a busy loop.
async def _services(request: Request) -> Services:
    return get_services(request)


async def _settings(request: Request) -> Settings:
    return get_services(request).settings


async def _sessions(request: Request) -> SessionManager:
    return get_services(request).sessions


ServicesDep = Annotated[Services, Depends(_services)]
SettingsDep = Annotated[Settings, Depends(_settings)]
SessionsDep = Annotated[SessionManager, Depends(_sessions)]
