"""`GET /metrics`: every contract name with its type and real values from a streaming pipeline,
low-cardinality labels, offers counted by result, and the scope it needs."""

from __future__ import annotations

import re
import time

import httpx
import jwt
from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT, running_server
from marked_frames import MarkedCamera
from rtc_client import connect
from test_webrtc import wait_until

#: CONTRACT.md "Metrics": name (as the family is parsed) → type
CONTRACT = {
    "visionguard_source_frames": "counter", "visionguard_processed_frames": "counter",
    "visionguard_skipped_frames": "counter", "visionguard_inference_seconds": "histogram",
    "visionguard_source_up": "gauge", "visionguard_source_reconnects": "counter",
    "visionguard_viewers": "gauge", "visionguard_sessions": "gauge", "visionguard_offers": "counter",
    "visionguard_sent_frames": "counter", "visionguard_event_loop_lag_seconds": "histogram",
    "visionguard_recording_bytes": "counter", "visionguard_events": "counter",
}
SECRET = "metrics-test-secret-that-is-long-enough-1234"


def parse(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(families: dict, sample: str, **labels) -> float:
    """The value of one sample (0 when absent), e.g. value(f, "visionguard_offers_total", result="ok")."""
    for family in families.values():
        for s in family.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


async def scrape(http: httpx.AsyncClient) -> dict:
    answer = await http.get("/metrics")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return parse(answer.text)


def test_the_contract_lists_these_names():
    text = (ROOT.parent / "shared" / "CONTRACT.md").read_text()
    section = text.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    named = {re.sub(r"_total$", "", n) for n in re.findall(r"`(visionguard_[a-z_]+)", section)}
    assert named == set(CONTRACT)


async def test_metrics_while_viewers_stream(vtest):
    async with running_server(MEDIA_DIR=vtest.parent, VIDEO_FILE_PATH="vtest.avi") as (url, svc):
        viewer = await connect(url, detections=True, model="person")
        by_file = await connect(url, video_path="vtest.avi")
        camera = await connect(url, send_track=MarkedCamera())
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            assert (await http.post("/api/offer", json={"sdp": "v=0", "type": "answer"})).status_code == 400
            assert (await http.post("/api/offer", json={"type": "offer"})).status_code == 422
            growing = [("visionguard_source_frames_total", {"source": "default"}),
                       ("visionguard_processed_frames_total", {"source": "default", "model": "person"}),
                       ("visionguard_sent_frames_total", {"source": "default"}),
                       ("visionguard_inference_seconds_count", {"model": "person"}),
                       ("visionguard_source_frames_total", {"source": "file"}),
                       ("visionguard_sent_frames_total", {"source": "camera"}),
                       ("visionguard_event_loop_lag_seconds_count", {})]
            first: dict = {}

            async def all_moving() -> bool:  # every viewer's video has begun
                first.update(await scrape(http))
                return all(value(first, sample, **labels) > 0 for sample, labels in growing)
            assert await wait_until(all_moving, 30), [(s, value(first, s, **ls)) for s, ls in growing]
            for name, kind in CONTRACT.items():
                assert name in first and first[name].type == kind, (name, first.get(name))
            await wait_until(lambda: False, 1.5)  # let the counters move
            second = await scrape(http)
            for sample, labels in growing:
                assert value(second, sample, **labels) > value(first, sample, **labels), (sample, labels)
            assert value(second, "visionguard_inference_seconds_sum", model="person") > 0
            assert value(second, "visionguard_offers_total", result="ok") == 3
            assert value(second, "visionguard_offers_total", result="400") == 1
            assert value(second, "visionguard_offers_total", result="422") == 1
            assert value(second, "visionguard_source_up", source="default") == 1
            assert value(second, "visionguard_source_running", source="default") == 1
            assert second["visionguard_events_dropped"].type == "counter"
            assert value(second, "visionguard_viewers", source="default") == 1
            assert value(second, "visionguard_viewers", source="file") == 1
            assert value(second, "visionguard_viewers", source="camera") == 1
            assert value(second, "visionguard_sessions", state="connected") == 3
            assert value(second, "visionguard_max_sessions") == svc.settings.MAX_SESSIONS
            # labels stay low-cardinality: no session id, path or URL ever becomes one
            allowed = {"default", "file", "camera", "person", "none", "ok", "400", "422", *CONTRACT_STATES}
            for family in second.values():
                for s in family.samples:
                    for key, label in s.labels.items():
                        assert key in ("le", "type", "reason") or label in allowed, (s.name, key, label)
            api = {s["name"]: s for s in (await http.get("/api/sources")).json()["sources"]}
            assert api["default"]["processed_fps"] > 0 and api["default"]["mean_inference_ms"] > 0

            await viewer.close()
            await by_file.close()
            await camera.close()
            assert await wait_until(lambda: not svc.sessions.sessions, 15)
            after = await scrape(http)
            assert value(after, "visionguard_source_up", source="default") == 0  # idle: nobody watches
            assert value(after, "visionguard_source_running", source="default") == 0  # so not down either
            assert value(after, "visionguard_viewers", source="default") == 0
            assert "file" not in {s.labels.get("source") for s in after["visionguard_viewers"].samples}
            # counters never go back when a pipeline stops
            assert value(after, "visionguard_processed_frames_total", source="default", model="person") >= \
                value(second, "visionguard_processed_frames_total", source="default", model="person")


CONTRACT_STATES = ("new", "connecting", "connected")


def token(*scopes: str) -> str:
    return jwt.encode({"sub": "prom", "scope": " ".join(scopes), "exp": int(time.time()) + 300}, SECRET)


async def test_metrics_needs_the_metrics_or_admin_scope():
    async with running_server(AUTH_MODE="jwt", JWT_SECRET=SECRET) as (url, svc):
        async with httpx.AsyncClient(base_url=url) as http:
            assert (await http.get("/metrics")).status_code == 401
            view = await http.get("/metrics", headers={"Authorization": f"Bearer {token('view')}"})
            assert view.status_code == 403 and view.json()["code"] == "insufficient_scope"
            for scopes in (("metrics",), ("admin",)):
                ok = await http.get("/metrics", headers={"Authorization": f"Bearer {token(*scopes)}"})
                assert ok.status_code == 200 and "visionguard_source_up" in ok.text
            # the metrics scope opens /metrics alone
            other = await http.get("/api/sources", headers={"Authorization": f"Bearer {token('metrics')}"})
            assert other.status_code == 403
            # a refused offer is counted by its status, never by who sent it
            assert (await http.post("/api/offer", json={"sdp": "v=0", "type": "offer"})).status_code == 401
            text = (await http.get("/metrics", headers={"Authorization": f"Bearer {token('metrics')}"})).text
            assert value(parse(text), "visionguard_offers_total", result="401") == 1
            assert "prom" not in " ".join(re.findall(r"\{[^}]*\}", text))  # no subject in a label
