"""Worker processes and the Prometheus multiprocess directory they share (doc/CLUSTER.md).

`python main.py` with WORKERS=N>1 is a supervisor: uvicorn starts N worker processes that share
one listening socket, each building its own app from `main:app`, and starts a new one when one
dies. Counters and histograms cannot be summed over processes in memory, so each worker writes
them to files in PROMETHEUS_MULTIPROC_DIR (prometheus_client's multiprocess mode) and `/metrics`
in any worker merges every worker's files (`core.metrics`).

prometheus_client chooses between in-memory and file values once, when it is first imported, from
the environment at that moment. The supervisor therefore sets the variable before uvicorn spawns
the workers (they are fresh interpreters that import everything again); in the supervisor itself,
which has imported prometheus_client already but never serves, it changes nothing.

The directory belongs to one run: files left from an earlier run would add its counts to this
one's, so it is emptied at start. A worker killed with SIGKILL never says it has gone, so its
live gauges (sessions, viewers, ...) would stay in the sums: `sweep_dead` removes them when a
scrape finds its pid dead. Its counters stay: they are totals of what it did.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: prometheus_client's file for a `live*` gauge of one process, e.g. gauge_livesum_4242.db
LIVE_GAUGE_FILE = re.compile(r"^gauge_live[a-z]+_(\d+)\.db$")


def multiproc_dir() -> Optional[str]:
    """Where this process's metrics are written, or None in single-process mode (the default).

    The mode follows the value class prometheus_client chose at import, not the variable now: one
    set later (a test, a library) would make `/metrics` read files that nothing writes."""
    from prometheus_client import values

    if not getattr(values.ValueClass, "_multiprocess", False):
        return None
    return os.environ.get(MULTIPROC_ENV)


def empty(path: str) -> None:
    """Remove the metric files (`*.db`) an earlier run left, and nothing else: an operator who
    points the variable at a folder holding other things loses none of them."""
    for file in Path(path).glob("*.db"):
        file.unlink(missing_ok=True)


def empty_given_dir() -> None:
    """`python main.py` in one process: a directory the operator set starts empty too (this
    process then writes its metrics there and `/metrics` reads them back)."""
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        os.makedirs(given, exist_ok=True)
        empty(given)


@contextmanager
def owned_dir() -> Iterator[str]:
    """For the time of the block: PROMETHEUS_MULTIPROC_DIR as the operator set it, or else a fresh
    private folder, emptied and exported for the workers to inherit. A private folder is removed
    afterwards; the operator's stays (empty of nothing but this run's files)."""
    given = os.environ.get(MULTIPROC_ENV)
    path = given or tempfile.mkdtemp(prefix="visionguard-metrics-")
    try:
        os.makedirs(path, exist_ok=True)
        empty(path)
        os.environ[MULTIPROC_ENV] = path
        yield path
    finally:
        if not given:
            os.environ.pop(MULTIPROC_ENV, None)
            shutil.rmtree(path, ignore_errors=True)


def serve(app: Any, import_string: str, settings: Any) -> None:
    """Serve `app` with uvicorn in this process until SIGINT/SIGTERM; with `settings.WORKERS` > 1,
    serve `import_string` in that many worker processes instead (each imports it and builds its
    own app), with the metrics directory this run owns. `app` is then only the proof, built by
    the caller, that the settings are right: one line before any worker starts."""
    import uvicorn

    options = dict(host=settings.SERVER_HOST, port=settings.SERVER_PORT,
                   log_level="debug" if settings.DEBUG_MODE else "info",
                   ssl_certfile=str(settings.SSL_CERTFILE) if settings.SSL_CERTFILE else None,
                   ssl_keyfile=str(settings.SSL_KEYFILE) if settings.SSL_KEYFILE else None)
    if settings.WORKERS == 1:
        uvicorn.run(app, **options)
        return
    with owned_dir():
        uvicorn.run(import_string, workers=settings.WORKERS, **options)


def alive(pid: int) -> bool:
    """Whether `pid` is a running process. A zombie (killed, not yet reaped by uvicorn's
    supervisor, which does so within half a second) counts as dead. A pid the system gave to
    another process since counts as alive: its gauges then stay until that one ends (rare)."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):  # no /proc (not Linux): os.kill said it exists
        return True
    return state not in ("Z", "X")


def sweep_dead(path: str) -> list[int]:
    """Remove the live gauges of every process in `path` that is no longer alive, and return
    those pids. Cheap enough for every scrape: one `kill(pid, 0)` per pid with live gauges, and a
    swept pid has none left to look at again."""
    from prometheus_client.multiprocess import mark_process_dead

    try:
        names = os.listdir(path)
    except FileNotFoundError:
        return []
    pids = {int(m.group(1)) for name in names if (m := LIVE_GAUGE_FILE.match(name))}
    dead = sorted(pid for pid in pids if not alive(pid))
    for pid in dead:
        mark_process_dead(pid, path)
    return dead
