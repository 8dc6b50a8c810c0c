"""The operator console (/console) in a real Chromium against a real server and real sources, and
the snapshot linger that lets its grid refresh without restarting pipelines."""

from __future__ import annotations

import asyncio
import time

import httpx

from api.tokens import mint_token
from conftest import ThreadWatch, free_port, running_server
from detectors import ModelRegistry
from hub import PipelineHub
from sources.spec import SourceSpec
from chromium import ARTIFACTS, console_errors, not_blank

SECRET = "console-test-secret-" + "0123456789abcdef" * 3
RTSP_FAST = {"RTSP_OPEN_TIMEOUT_S": 2, "RTSP_STALL_TIMEOUT_S": 2, "RTSP_RECONNECT_MAX_S": 1}
VIEWPORT = {"width": 1280, "height": 800}


async def until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return False


async def test_a_lingering_pipeline_is_kept_until_wanted_again_or_its_time_is_up():
    registry = ModelRegistry(0.5)
    registry.load("none")
    entry = registry.entries["none"]
    spec = SourceSpec(name="pattern", kind="synthetic")
    watch = ThreadWatch()
    hub = PipelineHub(64, 48, 15)
    try:
        for _ in range(5):  # five snapshots in a row: one start
            pipeline = hub.acquire(spec, entry)
            await hub.release(pipeline, linger_s=0.5)
        assert hub.pipelines_started == 1 and hub.captures_started == 1
        assert hub.lingering() == [("pattern", "none")] and hub.capture_for("pattern") is not None
        viewer = hub.acquire(spec, entry)  # wanted again while it lingers: the timer is off
        assert hub.lingering() == [] and viewer is pipeline
        await asyncio.sleep(0.8)
        assert hub.capture_for("pattern") is not None and hub.pipelines_started == 1
        snapshot = hub.acquire(spec, entry)
        await hub.release(snapshot, linger_s=0.4)
        assert hub.lingering() == []  # the viewer still watches
        await hub.release(viewer)  # the last one out, without linger, but within the snapshot's linger
        assert hub.lingering() == [("pattern", "none")] and hub.capture_for("pattern") is not None
        assert await until(lambda: hub.capture_for("pattern") is None, 10), "the linger never ended"
        assert hub.lingering() == [] and pipeline.stats()["viewers"] == 0 and hub.pipelines_started == 1
        hub.acquire(spec, entry)  # started again, then left lingering at shutdown
        await hub.release(hub.pipelines_for("pattern")[0], linger_s=60)
        assert hub.pipelines_started == 2
    finally:
        await asyncio.to_thread(hub.stop_all)
    assert hub.lingering() == [] and hub.running() == ([], [])
    assert await until(lambda: watch.new() == [], 10), watch.new()


async def test_snapshot_refreshes_of_an_idle_source_start_its_pipeline_once(threads):
    refreshes = 10
    gone = f"rtsp://127.0.0.1:{free_port()}/cam"  # nothing listens there
    async with running_server(SNAPSHOT_LINGER_S=30, SOURCES={"gone": gone}, **RTSP_FAST) as (url, svc):
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            for _ in range(refreshes):
                r = await http.get("/api/sources/default/snapshot.jpg")
                assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
            assert svc.hub.pipelines_started == 1 and svc.hub.captures_started == 1
            listed = {s["name"]: s for s in (await http.get("/api/sources")).json()["sources"]}
            assert listed["default"]["state"] == "live" and listed["default"]["viewers"] == 0
            assert listed["default"]["persons"] is None  # the `none` model finds no persons
            assert svc.hub.lingering() == [("default", "none")]
            # a source that cannot be opened: 503 with the reason as soon as it is known, not after
            # SNAPSHOT_WAIT_S, and its pipeline too is started once (it keeps trying while it lingers)
            for _ in range(3):
                began = time.monotonic()
                r = await http.get("/api/sources/gone/snapshot.jpg")
                assert r.status_code == 503 and "127.0.0.1" in r.json()["detail"], r.text
                assert time.monotonic() - began < 5
            assert svc.hub.pipelines_started == 2
            assert (await http.get("/api/sources")).json()["sources"][1]["state"] == "failed"
    # the server stopped with the pipelines still lingering: no thread left behind
    assert await until(lambda: threads.new() == [], 10), threads.new()


def _grid_state(name: str) -> str:
    return f"document.querySelector('.tile[data-source=\"{name}\"]')?.dataset.state"


async def test_console_grid_live_view_events_and_recordings(browser, vtest, rtsp_server, tmp_path):
    # only the vtest source runs the person model: two cores run this test in CI
    sources = {"pattern": {"url": "synthetic", "model": "none"}, "cam": {"url": rtsp_server.url, "model": "none"}}
    settings = dict(MEDIA_DIR=vtest.parent, VIDEO_FILE_PATH="vtest.avi", DEFAULT_MODEL="person", SOURCES=sources,
                    RECORDINGS_DIR=tmp_path, RECORD_EVENTS=True, **RTSP_FAST)
    async with running_server(**settings) as (url, svc):
        async with httpx.AsyncClient(base_url=url) as http:
            assert (await http.get("/")).json()["endpoints"]["console"] == "/console"
        page = await browser.new_page()
        await page.set_viewport_size(VIEWPORT)
        errors = console_errors(page)
        opened = time.monotonic()
        await page.goto(url + "/console")

        # three tiles, each started by its snapshot and live; the person count comes with them
        await page.wait_for_function("document.querySelectorAll('.tile').length === 3", timeout=15000)
        # an event within 10 s: the vtest tile's snapshot started its pipeline, which sees people
        await page.wait_for_function("document.querySelectorAll('#events li').length > 0", timeout=15000)
        event_after = time.monotonic() - opened
        assert event_after < 10, event_after
        shown = await page.eval_on_selector_all("#events li", "(lis) => lis.map((li) => li.textContent)")
        assert any("default" in t and "person seen" in t for t in shown), shown
        for name in ("default", "pattern", "cam"):
            await page.wait_for_function(f"{_grid_state(name)} === 'live'", timeout=20000)
        await page.wait_for_function("document.querySelectorAll('.tile.pictured').length === 3", timeout=20000)
        await page.wait_for_function(
            "window.vgc.sources.find((s) => s.name === 'default').persons > 0", timeout=15000)
        assert await page.is_visible('.tile[data-source="default"] .persons')


        # the camera's server goes away: the tile says so, with the reason (no password)
        rtsp_server.kill()
        await page.wait_for_function(f"['reconnecting', 'failed'].includes({_grid_state('cam')})",
                                     timeout=20000)
        await page.wait_for_function("!document.querySelector('.tile[data-source=\"cam\"] .reason').hidden",
                                     timeout=10000)
        reason = await page.text_content('.tile[data-source="cam"] .reason')
        assert "127.0.0.1" in reason and "s3cret" not in reason, reason
        assert await page.is_hidden('.tile[data-source="default"] .reason')
        await page.wait_for_function("window.vgc.healthLoads > 1 && window.vgc.health.status === 'degraded'",
                                     timeout=15000)
        assert "Source cam is" in await page.text_content("#health-problems")
        assert "fps" in await page.text_content('#health-figures .figure[data-source="default"]')
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "console.png"))

        # the vtest tile: live video with boxes and the detections list
        await page.click('.tile[data-source="default"]')
        await page.wait_for_function("document.getElementById('live-video').videoWidth === 640", timeout=30000)
        await page.wait_for_function("window.vgc.live.status === 'connected'", timeout=15000)
        await page.wait_for_function("document.querySelectorAll('#live-detections li').length > 0", timeout=15000)
        assert "person" in await page.text_content("#live-detections")
        await page.wait_for_function("(() => { const v = document.getElementById('live-video');"
                                     " return v.currentTime > 1 && !v.paused; })()", timeout=15000)
        assert len(svc.sessions.sessions) == 1
        await page.screenshot(path=str(ARTIFACTS / "console-live.png"))
        assert not_blank(await page.locator("#live-video").screenshot()) > 20
        await page.click("#live-close")
        assert await until(lambda: not svc.sessions.sessions, 10)

        # record the vtest source from the page, then play it in the page
        await page.select_option("#rec-source", "default")
        await page.wait_for_function("!document.getElementById('rec-toggle').disabled")
        await page.click("#rec-toggle")
        await page.wait_for_function("document.getElementById('rec-toggle').textContent.startsWith('Stop')")
        await page.wait_for_function("/Stop · [3-9] s/.test(document.getElementById('rec-toggle').textContent)",
                                     timeout=10000)
        await page.click("#rec-toggle")
        done = "document.querySelector('#recordings tbody tr[data-source=\"default\"]')?.dataset.state === 'done'"
        await page.wait_for_function(done, timeout=15000)
        await page.click('#recordings tbody tr[data-state="done"] .play')
        await page.wait_for_function("document.getElementById('media-video').currentTime > 1", timeout=15000)
        state = await page.evaluate("(({duration, paused, videoWidth}) => ({duration, paused, videoWidth}))"
                                    "(document.getElementById('media-video'))")
        assert state["duration"] >= 2.5 and not state["paused"] and state["videoWidth"] == 640, state
        assert await page.is_visible("#media-download")
        await page.screenshot(path=str(ARTIFACTS / "console-recording.png"))
        await page.click("#media-close")

        # deleted from the page (admin: two clicks)
        done_id = await page.get_attribute('#recordings tbody tr[data-state="done"]', "data-id")
        await page.click(f'#recordings tbody tr[data-id="{done_id}"] .delete')
        assert await page.text_content(f'#recordings tbody tr[data-id="{done_id}"] .delete') == "Confirm"
        await page.click(f'#recordings tbody tr[data-id="{done_id}"] .delete')
        await page.wait_for_function(f"!document.querySelector('#recordings tbody tr[data-id=\"{done_id}\"]')",
                                     timeout=10000)
        assert svc.recordings.store.get(done_id) is None

        # an event, large, with its recording (RECORD_EVENTS: still being written, and playable)
        await page.click("#events li:has(.tag)")
        await page.wait_for_function("(() => { const i = document.getElementById('media-image');"
                                     " return !i.hidden && i.complete && i.naturalWidth === 640; })()", timeout=15000)
        await page.wait_for_function("document.getElementById('media-video').currentTime > 0.5", timeout=15000)
        await page.screenshot(path=str(ARTIFACTS / "console-event.png"))
        await page.click("#media-close")

        # every source was started once, however often its tile was refreshed
        loaded = await page.evaluate("window.vgc.snapshotsLoaded")
        assert loaded > 6 and svc.hub.pipelines_started == 3, (loaded, svc.hub.stats())
        print(f"console figures: first event {event_after:.1f} s after opening the page; {loaded} snapshots "
              f"loaded, {svc.hub.pipelines_started} pipelines started for 3 sources")
        await page.close()
    # the failing camera's snapshots answer 503: Chromium logs those loads, nothing else is wrong
    errors = [e for e in errors if not ("/snapshot.jpg" in e and "503" in e)]
    assert errors == [], errors


async def test_console_asks_for_a_token_and_hides_what_the_scope_does_not_allow(browser, tmp_path):
    viewer = mint_token(SECRET, "carol", "view", 600)
    admin = mint_token(SECRET, "dave", "admin", 600)
    forged = mint_token("not-the-server-secret-" + "x" * 32, "carol", "view", 600)
    async with running_server(AUTH_MODE="jwt", JWT_SECRET=SECRET, RECORDINGS_DIR=tmp_path,
                              SOURCES={"other": "synthetic"}) as (url, svc):
        for name in ("default", "other"):  # one finished recording of each source, for the panel
            await svc.recordings.start_source(name)
            await asyncio.sleep(1.0)
            await svc.recordings.stop_source(name)
        page = await browser.new_page()
        await page.set_viewport_size(VIEWPORT)
        requests = []
        page.on("request", lambda request: requests.append(request))
        await page.goto(url + "/console")  # the page itself is open

        # no token: the field, with the server's reason, and the cursor in it
        await page.wait_for_function("!document.getElementById('auth').hidden && "
                                     "document.getElementById('auth-reason').textContent !== ''", timeout=15000)
        reason = await page.text_content("#auth-reason")
        assert "401" in reason and "Authorization: Bearer" in reason, reason
        assert await page.evaluate("document.activeElement.id") == "token"
        assert await page.evaluate("document.querySelectorAll('.tile').length") == 0
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "console-token.png"))

        # a token the server did not sign: its reason
        await page.fill("#token", forged)
        await page.click("#sign-in")
        await page.wait_for_function("document.getElementById('auth-reason').textContent.includes('signature')",
                                     timeout=15000)
        assert await page.evaluate("document.querySelectorAll('.tile').length") == 0

        # a `view` token: the grid, pictures through signed URLs, no admin actions
        await page.fill("#token", viewer)
        await page.click("#sign-in")
        await page.wait_for_function("document.querySelectorAll('.tile.pictured').length === 2", timeout=30000)
        await page.wait_for_function("window.vgc.recordingsLoads > 0 && window.vgc.authOn")
        # the snapshot started the source: its state follows at once, not a refresh later
        await page.wait_for_function(f"{_grid_state('default')} === 'live'", timeout=3000)
        assert await page.text_content("#auth-reason") == "" and await page.is_hidden("#error")
        assert await page.is_hidden("#rec-toggle")
        # the recordings are there to play, their Delete is not (hidden, not broken)
        await page.wait_for_function("document.querySelectorAll('#recordings tbody tr').length === 2", timeout=30000)
        assert await page.evaluate("[...document.querySelectorAll('#recordings .delete')]"
                                   ".every(b => getComputedStyle(b).display === 'none')")
        assert await page.evaluate("document.querySelectorAll('#recordings .delete').length") == 2
        assert "view" in await page.text_content("#auth-scope")
        src = await page.get_attribute('.tile[data-source="default"] img', "src")
        assert "sig=" in src and "sub=carol" in src
        assert await page.evaluate("sessionStorage.getItem('visionguard.token')") == viewer
        await page.screenshot(path=str(ARTIFACTS / "console-view-scope.png"))

        # an `admin` token: the admin actions come back
        await page.fill("#token", admin)
        await page.click("#sign-in")
        await page.wait_for_function("getComputedStyle(document.getElementById('rec-toggle')).display !== 'none'",
                                     timeout=10000)
        assert await page.evaluate("[...document.querySelectorAll('#recordings .delete')]"
                                   ".every(b => getComputedStyle(b).display !== 'none')")
        # the list per source
        await page.select_option("#rec-source", "other")
        await page.wait_for_function("[...document.querySelectorAll('#recordings tbody tr')]"
                                     ".map(r => r.dataset.source).join() === 'other'", timeout=30000)
        # never in a URL; every API call carries it in the header (media go on signed URLs)
        assert not [r.url for r in requests if viewer in r.url or admin in r.url or forged in r.url]
        for r in requests:
            if "/api/" in r.url and "sig=" not in r.url:
                auth = (await r.all_headers()).get("authorization", "")
                assert auth in ("", f"Bearer {forged}", f"Bearer {viewer}", f"Bearer {admin}"), (r.url, auth)
        await page.close()


async def test_closing_the_live_view_while_it_sets_up_leaves_no_session(browser):
    """Close (or open another tile) while the live view is still asking for ICE servers: no peer
    connection is made behind the closed dialog and no session is left on the server."""
    async with running_server() as (url, svc):
        page = await browser.new_page()
        await page.set_viewport_size(VIEWPORT)

        async def slow(route):  # widen the window between the click and the offer
            await asyncio.sleep(1.0)
            await route.continue_()
        await page.route("**/api/ice-servers", slow)
        await page.goto(url + "/console")
        await page.wait_for_selector(".tile")
        await page.click(".tile")
        await page.wait_for_timeout(200)
        await page.click("#live-close")
        await page.wait_for_timeout(3000)  # the ICE servers came meanwhile
        assert not await page.evaluate("document.getElementById('live').open")
        assert await page.evaluate("window.vgc.peer() === null")
        assert not svc.sessions.sessions and not svc.sessions.peer_connections
        await page.close()
