"""What makes `/health` say `degraded`, each as one sentence for its `problems` list:
- the configured video file is missing, or DEFAULT_MODEL failed to load (start-up fallbacks);
- a running source is down (reconnecting, or failed to open);
- a pipeline's process stage failed on its last `FAILED_FRAMES` frames in a row (the model or
  the overlay raises on every frame);
- a shared encoder keeps failing (`FAILED_ENCODES` attempts in a row, each after a backoff);
- a pipeline thread keeps dying or hanging (the watchdog gave up restarting it for now);
- the event loop's lag p99 over the last minute is above `LOOP_LAG_P99_S`;
- (REDIS_URL) Redis cannot be reached: video flows, new offers get 503 `cluster_unavailable`.
"""

from __future__ import annotations

from api.deps import Services
from sources.spec import display_name

FAILED_FRAMES = 5
FAILED_ENCODES = 3
LOOP_LAG_P99_S = 0.25


def problems(services: Services) -> list[str]:
    s = services.settings
    found = []
    if s.VIDEO_FILE_PATH and s.VIDEO_FILE_PATH != "synthetic" and services.sources["default"].kind == "synthetic":
        found.append(f"VIDEO_FILE_PATH {display_name(s.VIDEO_FILE_PATH, s.media_dir)!r} was not found; "
                     "streaming the synthetic source instead.")
    if services.model_notice:
        entry = services.models.entries[s.DEFAULT_MODEL]
        found.append(f"DEFAULT_MODEL {s.DEFAULT_MODEL!r} failed to load ({entry.error}); sources use 'none'.")
    captures, pipelines = services.hub.running()
    for capture in captures:
        # a viewer's own camera is that viewer's business (and its name holds part of a session id)
        if capture.state in ("reconnecting", "failed") and capture.spec.kind != "camera":
            name = capture.spec.metric_label  # an offer's file is `file`: /health is open to all
            found.append(f"Source {name} is {capture.state}: {capture.last_error}")
    for pipeline in pipelines:
        name = f"{pipeline.source}/{pipeline.model}"
        if pipeline.stage.failed_in_row >= FAILED_FRAMES:
            found.append(f"Pipeline {name} failed on its last {pipeline.stage.failed_in_row} frames: "
                         f"{pipeline.stage.worker.last_error}")
        for codec, (count, error) in dict(pipeline.encoders.failing).items():
            if count >= FAILED_ENCODES:
                found.append(f"Pipeline {name}: the {codec} encoder failed {count} times in a row: {error}")
    found += services.hub.problems()
    lag = services.loop_lag.p99()
    if lag > LOOP_LAG_P99_S:
        found.append(f"The event loop lags: p99 {lag * 1000:.0f} ms over the last minute "
                     f"(more than {LOOP_LAG_P99_S * 1000:.0f} ms); answers and video are delayed.")
    cluster = services.cluster.health() if services.cluster is not None else None
    if cluster is not None and cluster["redis"] == "down":
        found.append("Redis cannot be reached: the video already flowing goes on, new offers are refused "
                     "(cluster_unavailable) until it is back.")
    return found
