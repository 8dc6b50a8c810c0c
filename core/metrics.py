"""The Prometheus metrics of one app (names and labels: CONTRACT.md "Metrics").

Counters and histograms are updated where things happen (a capture thread counts its frames,
the process stage its results and inference time); gauges that describe state (source up,
viewers, sessions) are read when `/metrics` is scraped (`api.metrics`). Each app has its own
registry, so that several apps in one process (tests) never share counts.

With PROMETHEUS_MULTIPROC_DIR (several worker processes, `core.procs`) the metrics are written to
that directory instead and `/metrics` shows the whole node: the registry it exposes merges every
worker's files (counters and histograms are summed, the dead workers' included: they are totals).
Each worker writes its state gauges there too (`refreshers`, at each scrape it answers and every
`REFRESH_S`), and its `process_*` metrics as gauges labelled with its `pid`.

Labels stay low-cardinality: source and model names, state, result, type. Never a session id,
URL, path or user; camera-mode sessions share the source label `camera` and ad-hoc `video_path`
files share `file` (`SourceSpec.metric_label`).
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Callable, Optional

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from core.procs import multiproc_dir, sweep_dead

log = logging.getLogger("visionguard.metrics")

#: inference: 1 ms (a tiny model on a fast CPU) … 2 s (a big one on a slow box)
INFERENCE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0)
#: event-loop lag: healthy is a few ms; `/health` degrades when the p99 passes 250 ms
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: multiprocess mode: how old another worker's gauges may be when one worker answers a scrape
REFRESH_S = 1.0


class Noop:
    """Stands in for a metric child where nothing is measured (a part used on its own)."""

    def inc(self, amount: float = 1) -> None:
        pass

    def observe(self, amount: float) -> None:
        pass


NOOP = Noop()


class Metrics:
    def __init__(self) -> None:
        #: the multiprocess directory, or None: one process, everything in memory
        self.multiprocess = multiproc_dir()
        #: multiprocess mode: what writes this worker's gauges to the directory (api.metrics adds its own)
        self.refreshers: list[Callable[[], None]] = []
        self._task: Optional[asyncio.Task] = None
        if self.multiprocess:
            r = None  # the metric objects write to files; the exposed registry reads every worker's
            self.registry = CollectorRegistry()
            self.registry.register(NodeCollector(self.multiprocess, self.refresh))
            self.refreshers.append(ProcessGauges().refresh)
        else:
            r = self.registry = CollectorRegistry()
            ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes, open fds
        self.source_frames = Counter("visionguard_source_frames", "Frames captured from the source",
                                     ["source"], registry=r)
        self.processed_frames = Counter("visionguard_processed_frames", "Frames the model processed",
                                        ["source", "model"], registry=r)
        self.skipped_frames = Counter("visionguard_skipped_frames",
                                      "Captured frames the model skipped (newer ones came while it ran)",
                                      ["source", "model"], registry=r)
        self.inference = Histogram("visionguard_inference_seconds", "Time the model took per frame",
                                   ["model"], buckets=INFERENCE_BUCKETS, registry=r)
        self.source_reconnects = Counter("visionguard_source_reconnects",
                                         "Times a source failed and was opened again", ["source"], registry=r)
        self.offers = Counter("visionguard_offers", "Offers answered, by result (ok or the HTTP status)",
                              ["result"], registry=r)
        self.sent_frames = Counter("visionguard_sent_frames", "Frames sent to viewers (summed over viewers)",
                                   ["source"], registry=r)
        self.loop_lag = Histogram("visionguard_event_loop_lag_seconds",
                                  "How late the event loop ran a timer (a busy or blocked loop)",
                                  buckets=LAG_BUCKETS, registry=r)
        self.recording_bytes = Counter("visionguard_recording_bytes", "Bytes written to recordings",
                                       ["source"], registry=r)
        self.recording_dropped = Counter("visionguard_recording_dropped_frames",
                                         "Frames a recording left out because its writer fell behind (each gap "
                                         "runs to the next keyframe)", ["source"], registry=r)
        self.events = Counter("visionguard_events", "Events emitted", ["source", "type"], registry=r)
        self.sse_disconnects = Counter("visionguard_sse_disconnects",
                                       "Event-stream clients cut off (overflow: they fell SSE_CLIENT_BUFFER "
                                       "events behind)", ["reason"], registry=r)

    def refresh(self) -> None:
        for refresh in self.refreshers:
            refresh()

    def start(self) -> None:
        """Multiprocess mode: keep this worker's gauges fresh, so that a scrape any other worker
        answers sums current values (nothing to do in one process: gauges are read at scrape)."""
        if self.multiprocess:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="vg-metrics-refresh")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self.multiprocess:  # this worker's gauges leave the node's sums now, not at the next sweep
            mark_process_dead(os.getpid(), self.multiprocess)

    async def _run(self) -> None:
        while True:
            try:
                self.refresh()
            except Exception:  # a bad moment must not end the refreshing; the scrape shows the error
                log.exception("refreshing the metrics' gauges failed")
            await asyncio.sleep(REFRESH_S)


class NodeCollector:
    """Every worker's metric files merged (prometheus_client's MultiProcessCollector), after this
    worker wrote its own gauges and the live gauges of dead workers were swept (`core.procs`)."""

    def __init__(self, path: str, refresh: Callable[[], None]) -> None:
        self.path = path
        self.refresh = refresh
        self.merged = MultiProcessCollector(None, path)

    def collect(self):
        sweep_dead(self.path)
        self.refresh()
        return self.merged.collect()


class ProcessGauges:
    """This worker's `process_*` metrics (CPU seconds, memory, open fds, start time) as `liveall`
    gauges: the node shows each live worker's, labelled `pid`; a dead one's go with its sweep.
    Summed or merged they would mean nothing, and counted for whichever worker answered the
    scrape they would jump from worker to worker. (Their type is gauge, CPU seconds included:
    `rate()` per pid still works.)"""

    def __init__(self) -> None:
        self.source = ProcessCollector(registry=None)
        self.gauges: dict[str, Gauge] = {}

    def refresh(self) -> None:
        for family in self.source.collect():
            for sample in family.samples:
                gauge = self.gauges.get(sample.name)
                if gauge is None:
                    gauge = self.gauges[sample.name] = Gauge(sample.name, family.documentation, registry=None,
                                                             multiprocess_mode="liveall")
                gauge.set(sample.value)
