"""The Prometheus metrics of one app (names and labels: CONTRACT.md "Metrics").

Counters and histograms are updated where things happen (a capture thread counts its frames,
the process stage its results and inference time); gauges that describe state (source up,
viewers, sessions) are read when `/metrics` is scraped (`api.metrics`). Each app has its own
registry, so that several apps in one process (tests) never share counts.

Labels stay low-cardinality: source and model names, state, result, type. Never a session id,
URL, path or user; camera-mode sessions share the source label `camera` and ad-hoc `video_path`
files share `file` (`SourceSpec.metric_label`).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector

#: inference: 1 ms (a tiny model on a fast CPU) … 2 s (a big one on a slow box)
INFERENCE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0)
#: event-loop lag: healthy is a few ms; `/health` degrades when the p99 passes 250 ms
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Noop:
    """Stands in for a metric child where nothing is measured (a part used on its own)."""

    def inc(self, amount: float = 1) -> None:
        pass

    def observe(self, amount: float) -> None:
        pass


NOOP = Noop()


class Metrics:
    def __init__(self) -> None:
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
