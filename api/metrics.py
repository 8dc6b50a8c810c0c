"""`GET /metrics`: Prometheus text (names: CONTRACT.md "Metrics"; operators: doc/OPERATIONS.md).

Counters and histograms are counted where things happen (`core.metrics`); the gauges here are
read from the hub and the sessions at scrape time, so they can never drift from the truth.
With several worker processes (PROMETHEUS_MULTIPROC_DIR, `core.procs`) any worker's `/metrics`
shows the whole node: each worker writes its gauges to the shared directory (`NodeGauges`).
`CountOffers` counts every answer to `POST /api/offer` by result (`ok` or the HTTP status),
including those given before the route runs (413, 422, 401)."""

from __future__ import annotations

from collections import Counter as Tally
from typing import Any, Iterator, Optional

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from api.auth import MetricsDep
from api.deps import Services, ServicesDep
from api.errors import error_responses

router = APIRouter(tags=["service"])

#: WebRTC connection states a session can be in while it is held (always shown, 0 included)
SESSION_STATES = ("new", "connecting", "connected")

#: name: (help, label or None, how the node combines its workers' values in multiprocess mode).
#: A source runs in one worker (its owner), so up/running take the workers' max (1 if it is up
#: anywhere); viewers and sessions are where each peer connection lives, so they add up;
#: MAX_SESSIONS is every worker's same setting, so the max is that setting. `live*`: the values
#: of a worker that died leave the node's figures (`core.procs.sweep_dead`).
GAUGES: dict[str, tuple[str, Optional[str], str]] = {
    "visionguard_source_up": ("1 while the source delivers frames, else 0", "source", "livemax"),
    "visionguard_source_running": ("1 while something keeps the source's pipeline running (a viewer, always_on, "
                                   "a recording), else 0: up == 0 while running means down", "source", "livemax"),
    "visionguard_viewers": ("Sessions watching the source", "source", "livesum"),
    "visionguard_sessions": ("Sessions by WebRTC connection state", "state", "livesum"),
    "visionguard_max_sessions": ("MAX_SESSIONS (alerts compare sessions with it)", None, "livemax"),
}
DROPPED = ("visionguard_events_dropped", "Events that fell out of the kept log (EVENTS_MAX) since start")


def read_state(services: Services) -> dict[str, dict[tuple[str, ...], float]]:
    """The gauges' values now: name -> {label values: value}."""
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
    states = Tally(s.pc.connectionState for s in list(services.sessions.sessions.values()))
    sessions = {state: states.get(state, 0) for state in (*SESSION_STATES, *states)}
    by_label = {"visionguard_source_up": up, "visionguard_source_running": running, "visionguard_viewers": viewers,
                "visionguard_sessions": sessions}
    values = {name: {(key,): value for key, value in table.items()} for name, table in by_label.items()}
    values["visionguard_max_sessions"] = {(): services.settings.MAX_SESSIONS}
    return values


class StateCollector:
    """One process: the gauges, computed from the live state on each scrape."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def collect(self) -> Iterator[Any]:
        values = read_state(self.services)
        for name in ("visionguard_source_up", "visionguard_source_running", "visionguard_viewers",
                     "visionguard_sessions"):
            yield _gauge(name, values[name])
        dropped = CounterMetricFamily(*DROPPED)
        dropped.add_metric([], self.services.events.store.dropped)
        yield dropped
        yield _gauge("visionguard_max_sessions", values["visionguard_max_sessions"])


def _gauge(name: str, values: dict[tuple[str, ...], Any]) -> GaugeMetricFamily:
    help_text, label, _ = GAUGES[name]
    family = GaugeMetricFamily(name, help_text, labels=[label] if label else None)
    for key, value in values.items():
        family.add_metric(list(key), value)
    return family


class NodeGauges:
    """Multiprocess mode: this worker's share of the node's gauges, written to the metrics
    directory (`core.metrics` calls `refresh` at each scrape this worker answers and every
    second). A label value that went away (a session state, `camera`) is set to 0: prometheus_
    client cannot remove a series from a file. Events dropped by this worker's kept log are a
    counter, summed over workers like every counter."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.gauges = {name: Gauge(name, help_text, [label] if label else [], registry=None, multiprocess_mode=mode)
                       for name, (help_text, label, mode) in GAUGES.items()}
        self.shown: dict[str, set[tuple[str, ...]]] = {name: set() for name in GAUGES}
        self.dropped = Counter(*DROPPED, registry=None)
        self.dropped_counted = 0

    def refresh(self) -> None:
        for name, table in read_state(self.services).items():
            gauge, shown = self.gauges[name], self.shown[name]
            for key in shown - set(table):
                (gauge.labels(*key) if key else gauge).set(0)
            for key, value in table.items():
                (gauge.labels(*key) if key else gauge).set(value)
            shown.update(table)
        dropped = self.services.events.store.dropped
        if dropped > self.dropped_counted:
            self.dropped.inc(dropped - self.dropped_counted)
        self.dropped_counted = max(self.dropped_counted, dropped)


def install_collector(services: Services) -> None:
    metrics = services.metrics
    if metrics.multiprocess:
        metrics.refreshers.append(NodeGauges(services).refresh)
    else:
        metrics.registry.register(StateCollector(services))


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
