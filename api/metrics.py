"""`GET /metrics`: Prometheus text (names: CONTRACT.md "Metrics"; operators: doc/OPERATIONS.md).

Counters and histograms are counted where things happen (`core.metrics`); the gauges here are
read from the hub and the sessions at scrape time, so they can never drift from the truth.
`CountOffers` counts every answer to `POST /api/offer` by result (`ok` or the HTTP status),
including those given before the route runs (413, 422, 401)."""

from __future__ import annotations

from collections import Counter as Tally
from typing import Any, Iterator

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from api.auth import MetricsDep
from api.deps import Services, ServicesDep
from api.errors import error_responses

router = APIRouter(tags=["service"])

#: WebRTC connection states a session can be in while it is held (always shown, 0 included)
SESSION_STATES = ("new", "connecting", "connected")


class StateCollector:
    """The gauges, computed from the live state on each scrape."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def collect(self) -> Iterator[GaugeMetricFamily]:
        services = self.services
        captures, pipelines = services.hub.running()
        # every configured source is listed (0 while idle); `camera` and `file` while in use
        up = {spec.metric_label: 0 for spec in services.sources.values()}
        running, viewers = dict.fromkeys(up, 0), dict.fromkeys(up, 0)
        for capture in captures:
            label = capture.spec.metric_label
            up[label] = max(up.get(label, 0), int(capture.state == "live"))
            running[label] = 1
        for pipeline in pipelines:
            label = pipeline.capture.spec.metric_label
            viewers[label] = viewers.get(label, 0) + pipeline.viewers - pipeline.held
        yield _gauge("visionguard_source_up", "1 while the source delivers frames, else 0", "source", up)
        yield _gauge("visionguard_source_running", "1 while something keeps the source's pipeline running "
                     "(a viewer, always_on, a recording), else 0: up == 0 while running means down", "source", running)
        yield _gauge("visionguard_viewers", "Sessions watching the source", "source", viewers)
        states = Tally(s.pc.connectionState for s in list(services.sessions.sessions.values()))
        yield _gauge("visionguard_sessions", "Sessions by WebRTC connection state", "state",
                     {state: states.get(state, 0) for state in (*SESSION_STATES, *states)})
        dropped = CounterMetricFamily("visionguard_events_dropped", "Events that fell out of the kept log "
                                      "(EVENTS_MAX) since start")
        dropped.add_metric([], services.events.store.dropped)
        yield dropped
        limit = GaugeMetricFamily("visionguard_max_sessions", "MAX_SESSIONS (alerts compare sessions with it)")
        limit.add_metric([], services.settings.MAX_SESSIONS)
        yield limit


def _gauge(name: str, help_text: str, label: str, values: dict[str, Any]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, help_text, labels=[label])
    for key, value in values.items():
        family.add_metric([key], value)
    return family


def install_collector(services: Services) -> None:
    services.metrics.registry.register(StateCollector(services))


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"},
                       **error_responses({401: "No valid bearer token (AUTH_MODE=jwt; code `invalid_token`)",
                                          403: "The token lacks the `metrics` (or `admin`) scope"})})
async def metrics(services: ServicesDep, caller: MetricsDep) -> Response:
    """Counters (frames captured, processed, skipped, sent; offers by result; events; source
    reconnects), histograms (inference seconds per model, event-loop lag) and gauges (source
    up, viewers, sessions by state), in the Prometheus text format. fps is `rate()` of a
    counter. Needs the `metrics` or `admin` scope when AUTH_MODE=jwt. See doc/OPERATIONS.md."""
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)


class CountOffers:
    """ASGI middleware: count each `POST /api/offer` answer by its result."""

    def __init__(self, app, counter) -> None:
        self.app = app
        self.counter = counter

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != "/api/offer" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        counted = False

        async def counting_send(message):
            nonlocal counted
            if message["type"] == "http.response.start" and not counted:
                counted = True
                status = message["status"]
                self.counter.labels("ok" if status == 200 else str(status)).inc()
            await send(message)

        await self.app(scope, receive, counting_send)
