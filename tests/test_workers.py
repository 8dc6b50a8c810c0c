"""`python main.py` with WORKERS=2: real worker processes, one node.

Answers come from both workers (they share one listening socket); `/metrics` on either shows the
node (counters summed over the workers, gauges written by each worker, `process_*` per pid); a
worker killed with SIGKILL leaves the live gauges and uvicorn starts another; the metrics
directory starts empty. One node serves the tests that share `node` (start-up is the slow part).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT, free_port, main_py_stop_line, started_redis_server
from rtc_client import connect

HEADER = "X-VisionGuard-Node"
NOT_A_PID = 999_999_999  # above any pid_max: a worker of an earlier run, long gone


@dataclass
class Node:
    url: str
    proc: subprocess.Popen
    metrics_dir: Path
    log: Path

    def workers(self) -> set[int]:
        """The parent's worker processes (uvicorn spawns them; multiprocessing's resource tracker,
        also a child, is not one)."""
        out = set()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
                cmdline = (stat.parent / "cmdline").read_bytes()
            except (OSError, IndexError, ValueError):
                continue  # ended while we looked
            if ppid == self.proc.pid and b"spawn_main" in cmdline:
                out.add(int(stat.parent.name))
        return out

    def get(self, path: str) -> httpx.Response:
        # a new connection for each request: a kept-alive one would stay with one worker
        with httpx.Client(base_url=self.url, timeout=20, limits=httpx.Limits(max_keepalive_connections=0)) as c:
            return c.get(path)

    def post(self, path: str, body: dict) -> httpx.Response:
        with httpx.Client(base_url=self.url, timeout=20, limits=httpx.Limits(max_keepalive_connections=0)) as c:
            return c.post(path, json=body)

    def scrape(self) -> tuple[int, dict]:
        """(pid of the worker that answered, {(sample name, sorted labels): value})."""
        r = self.get("/metrics")
        assert r.status_code == 200, r.text
        values = {(s.name, tuple(sorted(s.labels.items()))): s.value
                  for family in text_string_to_metric_families(r.text) for s in family.samples}
        return pid_of(r), values

    def diagnose(self) -> str:
        return self.log.read_text()[-3000:]


def pid_of(r: httpx.Response) -> int:
    return int(r.headers[HEADER].rsplit("-", 1)[1])  # NODE_ID unset: <host>-<pid of the worker>


def live_gauge_files(directory: Path, pid: int) -> list[str]:
    return sorted(p.name for p in directory.glob(f"gauge_live*_{pid}.db"))


def prefill(directory: Path) -> None:
    """What an earlier run leaves: a dead worker's counter (1000 refused offers) and live gauge,
    and a file that is not prometheus_client's (it stays)."""
    directory.mkdir()
    counter = MmapedDict(str(directory / f"counter_{NOT_A_PID}.db"))
    counter.write_value(mmap_key("visionguard_offers", "visionguard_offers_total", ["result"], ["400"], "x"), 1000, 0)
    counter.close()
    gauge = MmapedDict(str(directory / f"gauge_livesum_{NOT_A_PID}.db"))
    gauge.write_value(mmap_key("visionguard_sessions", "visionguard_sessions", ["state"], ["connected"], "x"), 7, 0)
    gauge.close()
    (directory / "keep.txt").write_text("not a metrics file")


@pytest.fixture(scope="module")
def redis_url():
    server = started_redis_server()
    yield server.url
    server.stop()


@pytest.fixture(scope="module")
def node(redis_url, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("workers")
    metrics_dir = tmp / "metrics"
    prefill(metrics_dir)
    port = free_port()
    env = {**os.environ, "WORKERS": "2", "REDIS_URL": redis_url, "SERVER_HOST": "127.0.0.1",
           "SERVER_PORT": str(port), "STUN_SERVERS": "[]", "ICE_HOST_ADDRESSES": '["127.0.0.1"]',
           "DEFAULT_MODEL": "none", "EVENTS_FILE": "", "RECORDINGS_DIR": str(tmp / "recordings"),
           "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "PYTHONUNBUFFERED": "1"}
    env.pop("NODE_ID", None)
    log = tmp / "main.log"
    with open(log, "w") as out:  # a file, not a pipe: nobody has to read it for the server to go on
        proc = subprocess.Popen([sys.executable, "main.py"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    node = Node(f"http://127.0.0.1:{port}", proc, metrics_dir, log)
    try:
        wait_until_serving(node)
        yield node
    finally:
        stop(proc)


def wait_until_serving(node: Node, timeout: float = 120.0) -> None:
    """Until both workers have answered (each has started: its gauges are written)."""
    deadline = time.monotonic() + timeout
    answered: set[int] = set()
    while time.monotonic() < deadline:
        assert node.proc.poll() is None, f"python main.py ended: {node.diagnose()}"
        try:
            r = node.get("/health")
            if r.status_code == 200:
                answered.add(pid_of(r))
            workers = node.workers()
            if len(workers) == 2 and answered >= workers:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"not serving within {timeout} s: {node.diagnose()}")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the parent (uvicorn stops its workers, then itself); if it hangs, kill its group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
            return
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: the parent and its workers only
    except ProcessLookupError:
        pass
    proc.wait(10)


def wait_for(check, what: str, node: Node, timeout: float = 60.0):
    """Call `check()` until it returns something true; a request that fails on the way (a worker
    that just died) is tried again."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except httpx.TransportError as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout} s (last: {last!r}); log: {node.diagnose()}")


def test_workers_above_one_need_redis():
    line = main_py_stop_line("import os; os.environ['WORKERS'] = '2'; os.environ.pop('REDIS_URL', None)")
    assert line.startswith("Invalid setting") and "REDIS_URL" in line and "WORKERS" in line


def test_a_private_metrics_directory_lasts_as_long_as_the_run(monkeypatch):
    from core.procs import MULTIPROC_ENV, owned_dir

    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    with owned_dir() as path:
        assert os.environ[MULTIPROC_ENV] == path and Path(path).is_dir()  # what the workers inherit
    assert MULTIPROC_ENV not in os.environ and not Path(path).exists()


def test_answers_come_from_both_workers(node):
    workers = node.workers()
    assert len(workers) == 2
    seen: set[int] = set()

    def both() -> bool:
        seen.add(pid_of(node.get("/health")))
        return seen == workers

    wait_for(both, f"answers from both workers {workers}", node)


def test_the_metrics_directory_starts_empty(node):
    names = {p.name for p in node.metrics_dir.iterdir()}
    assert "keep.txt" in names  # only prometheus_client's files are removed
    assert not [n for n in names if str(NOT_A_PID) in n], names


def test_metrics_on_either_worker_sum_the_node(node):
    """Refused offers counted by both workers: every scrape, whichever worker answers, shows
    their sum (and none of the 1000 in the earlier run's file)."""
    by_worker: dict[int, int] = {}
    bad = {"sdp": "not sdp", "type": "offer"}

    def refused_by_both() -> bool:
        r = node.post("/api/offer", bad)
        assert r.status_code == 400, r.text
        by_worker[pid_of(r)] = by_worker.get(pid_of(r), 0) + 1
        return len(by_worker) == 2 and min(by_worker.values()) >= 3

    wait_for(refused_by_both, "bad offers answered by both workers", node)
    sent = sum(by_worker.values())
    workers = node.workers()
    scraped_by: set[int] = set()

    def scraped_by_both() -> bool:
        pid, values = node.scrape()
        scraped_by.add(pid)
        assert values[("visionguard_offers_total", (("result", "400"),))] == sent, (pid, by_worker)
        assert values[("visionguard_max_sessions", ())] == 100  # each worker's setting, not their sum
        assert values[("visionguard_sessions", (("state", "connected"),))] == 0  # the old file's 7 is gone
        shown = {int(dict(labels)["pid"]) for name, labels in values if name == "process_resident_memory_bytes"}
        assert shown == workers, (shown, workers)  # one series per live worker
        return scraped_by == workers

    wait_for(scraped_by_both, "scrapes answered by both workers", node)


async def test_gauges_on_either_worker_show_the_other_workers_session(node):
    """A real WebRTC session lives in one worker; both workers' `/metrics` show it."""
    import asyncio

    async def scrape() -> tuple[int, dict]:
        return await asyncio.to_thread(node.scrape)

    wanted = {("visionguard_sessions", (("state", "connected"),)): 1, ("visionguard_viewers", (("source", "default"),)): 1,
              ("visionguard_source_up", (("source", "default"),)): 1}  # up: the max over workers, not a sum
    viewer = await connect(node.url)
    try:
        await viewer.track()
        scraped_by: set[int] = set()
        deadline = time.monotonic() + 60
        while scraped_by != node.workers():
            pid, values = await scrape()
            shown = {key: values.get(key) for key in wanted}
            assert time.monotonic() < deadline, f"shown by {scraped_by} only (last: {shown}); log: {node.diagnose()}"
            if shown == wanted:
                scraped_by.add(pid)
            await asyncio.sleep(0.1)
    finally:
        await viewer.close()


async def test_two_workers_agree_on_sessions_and_run_the_source_once(node):
    """Issue 14 with the seed's shape (one port, uvicorn's workers): wherever the offers land,
    both viewers get video, the source runs in one worker, and every answer lists both sessions."""
    import asyncio

    viewers = [await connect(node.url) for _ in range(2)]
    try:
        for viewer in viewers:
            await viewer.receive(5)
        expected = {v.session_id for v in viewers}
        seen_by, answers = {}, []
        deadline = time.monotonic() + 60
        while len(seen_by) < 2 or len(answers) < 20:
            assert time.monotonic() < deadline, f"answers only from {set(seen_by)}"
            r = await asyncio.to_thread(node.get, "/api/sessions")
            answers.append(set(r.json()["active_sessions"]))
            r = await asyncio.to_thread(node.get, "/info")
            seen_by[r.headers[HEADER]] = [c for c in r.json()["pipelines"]["captures"] if c["source"] == "default"]
        assert all(a == expected for a in answers), answers
        assert sum(len(c) for c in seen_by.values()) == 1, seen_by  # opened by one worker of the two
    finally:
        for viewer in viewers:
            await viewer.close()


def test_a_killed_worker_leaves_the_live_gauges_and_is_replaced(node):
    workers = node.workers()
    _, before = node.scrape()
    offers = {k: v for k, v in before.items() if k[0] == "visionguard_offers_total"}
    victim = min(workers)
    assert live_gauge_files(node.metrics_dir, victim)  # it wrote its gauges
    os.kill(victim, signal.SIGKILL)

    def swept_and_replaced():
        pid, values = node.scrape()  # whichever worker answers sweeps
        now = node.workers()
        shown = {int(dict(labels)["pid"]) for name, labels in values if name == "process_resident_memory_bytes"}
        if live_gauge_files(node.metrics_dir, victim) or victim in shown or len(now - workers) != 1:
            return None
        # the dead worker's counters stay: they are totals of what it did
        assert {k: v for k, v in values.items() if k[0] == "visionguard_offers_total"} == offers
        return now - workers

    (replacement,) = wait_for(swept_and_replaced, f"worker {victim} swept and replaced", node)
    wait_for(lambda: pid_of(node.get("/health")) == replacement, "the replacement answers", node)


def test_the_seeds_uvicorn_workers_command_is_one_node_too(redis_url, tmp_path):
    """`uvicorn main:app --workers 2` with the operator's (empty) PROMETHEUS_MULTIPROC_DIR and
    REDIS_URL: both workers answer, one cluster, and /metrics on either sums the node."""
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    port = free_port()
    env = {**os.environ, "REDIS_URL": redis_url, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
           "STUN_SERVERS": "[]", "ICE_HOST_ADDRESSES": '["127.0.0.1"]', "DEFAULT_MODEL": "none", "EVENTS_FILE": "",
           "RECORDINGS_DIR": str(tmp_path / "recordings"), "PYTHONUNBUFFERED": "1"}
    env.pop("NODE_ID", None)
    env.pop("WORKERS", None)
    log = tmp_path / "uvicorn.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "main:app", "--workers", "2", "--host", "127.0.0.1",
                                 "--port", str(port), "--log-level", "warning"], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    node = Node(f"http://127.0.0.1:{port}", proc, metrics_dir, log)
    try:
        wait_until_serving(node)
        by_worker: dict[int, int] = {}

        def refused_by_both() -> bool:
            r = node.post("/api/offer", {"sdp": "not sdp", "type": "offer"})
            assert r.status_code == 400, r.text
            by_worker[pid_of(r)] = by_worker.get(pid_of(r), 0) + 1
            return len(by_worker) == 2

        wait_for(refused_by_both, "bad offers answered by both workers", node)
        scraped_by: set[int] = set()

        def scraped_by_both() -> bool:
            pid, values = node.scrape()
            scraped_by.add(pid)
            assert values[("visionguard_offers_total", (("result", "400"),))] == sum(by_worker.values())
            return scraped_by == node.workers()

        wait_for(scraped_by_both, "scrapes answered by both workers", node)
        health = node.get("/health").json()["cluster"]
        assert health["redis"] == "ok"
        # (the module's other node may share this Redis: at least these two)
        wait_for(lambda: node.get("/health").json()["cluster"]["workers"] >= 2, "both workers in the cluster", node)
    finally:
        stop(proc)
