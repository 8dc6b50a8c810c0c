"""The demo page in a real Chromium (Debian's, driven by Playwright): playing, camera mode, errors
shown to the person, models and sources, reconnecting, and access control."""

from __future__ import annotations

import asyncio
import re

import httpx

from chromium import ARTIFACTS, console_errors, not_blank, playing_rate
from conftest import free_port, running_server


async def test_demo_page_plays_with_detections_and_stats(browser, vtest):
    async with running_server(MEDIA_DIR=vtest.parent, VIDEO_FILE_PATH="vtest.avi", DEFAULT_MODEL="person") as (url, svc):
        async with httpx.AsyncClient(base_url=url) as http:
            assert (await http.get("/")).json()["endpoints"]["demo"] == "/demo"
        page = await browser.new_page()
        await page.goto(url + "/demo")
        await page.wait_for_function("document.querySelectorAll('#source option').length > 0")
        first_button = page.locator("button").first
        assert await first_button.text_content() == "Connect"
        await first_button.click()
        await page.wait_for_function("document.getElementById('video').videoWidth === 640", timeout=30000)
        assert await page.evaluate("document.getElementById('video').videoHeight") == 480
        await page.wait_for_function("window.vg.status === 'connected'")
        rate = await playing_rate(page)
        assert 15 < rate < 45, rate
        first = await page.text_content("#frame-id")
        await page.wait_for_function(f"document.getElementById('frame-id').textContent !== '{first}'")
        await page.wait_for_function("document.querySelectorAll('#detections li').length > 0", timeout=15000)
        assert "person" in await page.text_content("#detections")
        await page.wait_for_function("document.getElementById('st-codec').textContent !== '-'", timeout=10000)
        assert await page.text_content("#st-res") == "640×480"
        assert (await page.text_content("#st-fps")).isdigit()
        ARTIFACTS.mkdir(exist_ok=True)
        shot = await page.screenshot(path=str(ARTIFACTS / "demo-view.png"))
        video_shot = await page.locator("#video").screenshot(path=str(ARTIFACTS / "demo-video.png"))
        assert not_blank(shot) > 10 and not_blank(video_shot) > 20
        (session,) = svc.sessions.sessions.values()
        await page.click("#disconnect")
        assert await wait_gone(svc, session.id)


async def wait_gone(svc, session_id: str, timeout: float = 10) -> bool:
    for _ in range(int(timeout * 10)):
        if session_id not in svc.sessions.sessions:
            return True
        await asyncio.sleep(0.1)
    return False


async def test_demo_camera_mode_round_trips_the_fake_camera(browser):
    async with running_server(DEFAULT_MODEL="person") as (url, svc):
        page = await browser.new_page()
        await page.goto(url + "/demo")
        await page.select_option("#mode", "camera")
        await page.click("#connect")
        await page.wait_for_function("document.getElementById('video').videoWidth === 640", timeout=30000)
        rate = await playing_rate(page)
        assert rate > 10, rate  # the fake camera's own rate, processed and sent back
        (session,) = svc.sessions.sessions.values()
        assert session.mode == "camera" and session.camera.received > 30
        await page.wait_for_function("window.vg.messages > 5", timeout=15000)
        ARTIFACTS.mkdir(exist_ok=True)
        assert not_blank(await page.locator("#video").screenshot(path=str(ARTIFACTS / "demo-camera.png"))) > 10


async def pill(page) -> dict:
    """The status pill: what it says, its state and its background colour."""
    return await page.evaluate("""(() => { const p = document.getElementById('status');
        return {text: p.textContent, state: p.dataset.state, cls: p.className,
                colour: getComputedStyle(p).backgroundColor}; })()""")


async def test_demo_shows_api_errors_to_the_person(browser):
    async with running_server(MAX_SESSIONS=1) as (url, svc):
        one = await browser.new_page()
        await one.goto(url + "/demo")
        await one.click("#connect")
        await one.wait_for_function("window.vg.status === 'connected'", timeout=30000)
        two = await browser.new_page()
        await two.goto(url + "/demo")
        await two.click("#connect")
        await two.wait_for_function("!document.getElementById('error').hidden", timeout=15000)
        # in plain words, chosen by the body's code; the countdown starts at the Retry-After (5 s)
        message = await two.text_content("#error-text")
        assert re.fullmatch(r"The server is full \(1 viewer\); retrying in [45] s", message), message
        assert "Connection lost" not in message and await two.text_content("#retry-now") == "Retry now"
        assert await two.evaluate("window.vg.status") == "reconnecting"
        first = await two.evaluate("window.vg.retryIn")
        await two.wait_for_function(f"window.vg.retryIn !== null && window.vg.retryIn < {first}", timeout=3000)
        counted = re.search(r"retrying in (\d) s$", await two.text_content("#error-text"))
        assert counted and int(counted[1]) < first, counted  # the text counts down too
        ARTIFACTS.mkdir(exist_ok=True)
        await two.screenshot(path=str(ARTIFACTS / "demo-server-full.png"))
        # a seat frees up: Retry now connects at once, without waiting for the countdown
        await one.click("#disconnect")
        await one.wait_for_function("window.vg.status === 'idle'")
        for _ in range(50):
            if not svc.sessions.sessions:
                break
            await asyncio.sleep(0.1)
        # (one call: the countdown cannot run out between finding the button and clicking it)
        left = await two.evaluate("(() => { const b = document.getElementById('retry-now');"
                                  " const left = window.vg.retryIn; if (b) b.click(); return b ? left : null; })()")
        assert left is not None and left >= 1, left
        await two.wait_for_function("window.vg.status === 'connected'", timeout=15000)
        assert await two.is_hidden("#error")
        await two.click("#disconnect")


async def test_demo_lists_unavailable_models_switches_model_and_clears_on_disconnect(browser):
    """yolo without MODEL_PATH: listed, disabled, with why. A new model while connected is a
    new session with it; Disconnect leaves no frame, detections or stats behind. The header
    links to the API docs and the console; the favicon loads (no 404 in the console)."""
    async with running_server() as (url, svc):
        page = await browser.new_page()
        errors = console_errors(page)
        await page.goto(url + "/demo")
        await page.wait_for_function("document.querySelectorAll('#model option').length > 1")
        yolo = await page.evaluate("""(() => { const o = document.querySelector('#model option[value=yolo]');
            return {text: o.textContent, disabled: o.disabled, title: o.title}; })()""")
        assert yolo == {"text": "yolo (unavailable: needs MODEL_PATH)", "disabled": True, "title": "needs MODEL_PATH"}
        assert not await page.evaluate("document.querySelector('#model option[value=edges]').disabled")
        assert await page.get_attribute("header a[href='/docs']", "href") and \
            await page.get_attribute("header a[href='/console']", "href")
        assert await page.get_attribute("link[rel=icon]", "href") == "/static/favicon.svg"
        async with httpx.AsyncClient(base_url=url) as http:
            icon = await http.get("/favicon.ico")
            assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
        await page.click("#connect")
        await page.wait_for_function("window.vg.status === 'connected' && window.vg.frameId !== null", timeout=30000)
        (first,) = svc.sessions.sessions.values()
        assert first.model == "none"
        await page.select_option("#model", "edges")  # while connected: applied, by a new session
        for _ in range(100):
            models = [s.model for s in svc.sessions.sessions.values()]
            if models == ["edges"]:
                break
            await asyncio.sleep(0.1)
        assert models == ["edges"], models
        await page.wait_for_function("window.vg.status === 'connected' && window.vg.frameId !== null", timeout=30000)
        await page.wait_for_function("document.getElementById('st-codec').textContent !== '-'", timeout=10000)
        await page.click("#disconnect")
        panels = await page.evaluate("""(() => ({
            video: document.getElementById('video').srcObject,
            frame: document.getElementById('frame-id').textContent,
            found: document.getElementById('det-count').textContent,
            inference: document.getElementById('inference').textContent,
            detections: document.querySelectorAll('#detections li').length,
            stats: [...document.querySelectorAll('#stats td')].map((td) => td.textContent)}))()""")
        assert panels == {"video": None, "frame": "-", "found": "0", "inference": "-", "detections": 0,
                          "stats": ["-"] * 6}, panels
        assert (await pill(page))["state"] == "idle" and await page.is_hidden("#error")
        # nothing failed: no favicon 404 (a DELETE may find its session already ended by the close)
        assert not [e for e in errors if "/api/session/" not in e], errors
        await page.close()


async def test_demo_pill_shows_a_failing_source_with_its_reason(browser, rtsp_server):
    """Connected, but the camera behind the source is gone: amber `source unavailable: <why>`
    (not green `connected`), the menu says `reconnecting`; the reason stays listed after
    Disconnect, until the source is live again."""
    sources = {"lobby": {"url": rtsp_server.url, "model": "none"}}
    fast = {"RTSP_OPEN_TIMEOUT_S": 2, "RTSP_STALL_TIMEOUT_S": 2, "RTSP_RECONNECT_MAX_S": 1}
    async with running_server(SOURCES=sources, **fast) as (url, svc):
        page = await browser.new_page()
        await page.goto(url + "/demo")
        await page.wait_for_function("document.querySelector('#source option[value=lobby]')")
        await page.select_option("#source", "lobby")
        await page.click("#connect")
        await page.wait_for_function("window.vg.status === 'connected' && window.vg.frameId !== null", timeout=30000)
        lobby = "document.querySelector('#source option[value=lobby]')"
        await page.wait_for_function(f"{lobby}.textContent === 'lobby (rtsp, live)'", timeout=10000)
        green = await pill(page)
        assert green["text"] == "connected" and green["colour"] == "rgb(183, 228, 199)", green

        await asyncio.to_thread(rtsp_server.kill)
        await page.wait_for_function("window.vg.status === 'unavailable'", timeout=20000)
        amber = await pill(page)
        assert amber["text"].startswith("source unavailable: ") and "127.0.0.1" in amber["text"], amber
        assert amber["colour"] == "rgb(255, 197, 107)" and amber["cls"] == "status", amber  # no .error style
        assert "s3cret" not in amber["text"]
        assert await page.text_content("#source option[value=lobby]") == "lobby (rtsp, reconnecting)"
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "demo-source-unavailable.png"))

        await page.click("#disconnect")  # the source goes idle, its last error stays listed
        await page.wait_for_function(f"{lobby}.textContent === 'lobby (rtsp, idle)'", timeout=15000)
        assert "127.0.0.1" in await page.get_attribute("#source option[value=lobby]", "title")

        await asyncio.to_thread(rtsp_server.start)
        await page.click("#connect")
        await page.wait_for_function(f"window.vg.status === 'connected' && {lobby}.textContent === 'lobby (rtsp, live)'",
                                     timeout=30000)
        assert await page.get_attribute("#source option[value=lobby]", "title") == ""
        await page.click("#disconnect")
        await page.close()


async def test_demo_reconnects_by_itself_after_a_server_restart(browser):
    port = free_port()
    page = await browser.new_page()
    async with running_server(port=port) as (url, svc):
        await page.goto(url + "/demo")
        await page.click("#connect")
        await page.wait_for_function("window.vg.status === 'connected'", timeout=30000)
    # the server is gone: the page notices and says so
    await page.wait_for_function("window.vg.status === 'reconnecting'", timeout=30000)
    assert "reconnecting" in (await page.text_content("#error")).lower()
    async with running_server(port=port) as (url, svc):
        await page.wait_for_function("window.vg.status === 'connected'", timeout=60000)
        assert await page.evaluate("window.vg.reconnects") >= 1
        assert await playing_rate(page, 3) > 10
        assert len(svc.sessions.sessions) == 1


# Access control (AUTH_MODE=jwt): the token travels in the Authorization header, never in a URL
AUTH_SECRET = "browser-test-secret-" + "0123456789abcdef" * 3


async def api_requests_after(requests: list, start: int) -> list[tuple[str, str, dict]]:
    """(method, url, all headers) of the API requests recorded from index `start` on."""
    return [(r.method, r.url, await r.all_headers()) for r in requests[start:] if "/api/" in r.url]


async def test_demo_asks_for_a_token_and_sends_it_only_in_the_authorization_header(browser):
    from api.tokens import mint_token

    token = mint_token(AUTH_SECRET, "alice", "view", 600)
    forged = mint_token("not-the-server-secret-" + "x" * 32, "alice", "view", 600)
    async with running_server(AUTH_MODE="jwt", JWT_SECRET=AUTH_SECRET) as (url, svc):
        page = await browser.new_page()
        requests = []
        page.on("request", lambda request: requests.append(request))
        await page.goto(url + "/demo")  # the page itself is open
        done = "window.vg.status === 'error' && !document.getElementById('connect').disabled"

        # no token: the server's reason, what to do, and the field, with the cursor in it
        await page.click("#connect")
        await page.wait_for_function(done, timeout=15000)
        message = await page.text_content("#error")
        assert "401" in message and "needs an 'Authorization: Bearer <token>' header" in message, message
        assert "access token" in message.lower()
        assert await page.is_visible("#token")
        assert await page.evaluate("document.activeElement.id") == "token"
        assert await page.evaluate("sessionStorage.length") == 0 and svc.sessions.sessions == {}
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "demo-token-needed.png"))

        # a token the server did not sign: its reason is shown
        await page.fill("#token", forged)
        await page.click("#connect")
        await page.wait_for_function(done + " && document.getElementById('error').textContent.includes('signature')",
                                     timeout=15000)
        assert "401" in await page.text_content("#error") and svc.sessions.sessions == {}

        # the right one: it plays, and the session is alice's
        start = len(requests)
        await page.fill("#token", token)
        await page.click("#connect")
        await page.wait_for_function("document.getElementById('video').videoWidth === 640", timeout=30000)
        await page.wait_for_function("window.vg.status === 'connected'", timeout=15000)
        (session,) = svc.sessions.sessions.values()
        assert session.owner == "alice"
        assert await page.is_hidden("#error")
        assert await page.evaluate("document.querySelectorAll('#source option').length") > 0  # listed now
        assert await page.evaluate("sessionStorage.getItem('visionguard.token')") == token
        await page.click("#disconnect")
        assert await wait_gone(svc, session.id)
        for _ in range(100):  # the DELETE is sent without waiting for it
            if any(r.method == "DELETE" for r in requests[start:]):
                break
            await asyncio.sleep(0.1)

        sent = await api_requests_after(requests, start)
        paths = {(method, u.split(url, 1)[1]) for method, u, _ in sent}
        assert {("GET", "/api/sources"), ("GET", "/api/models"), ("GET", "/api/ice-servers"), ("POST", "/api/offer"),
                ("DELETE", f"/api/session/{session.id}")} <= paths, paths
        # every API call carries the token; only media the browser loads by itself (the event
        # stream, thumbnails) go without it, on a signed URL
        assert not [(m, u) for m, u, headers in sent
                    if headers.get("authorization") != f"Bearer {token}" and "sig=" not in u]
        delete = next(r for r in requests[start:] if r.method == "DELETE")
        # accepted: 200, or 404 when the peer's close (sent right after it) ended the session first
        assert (await delete.response()).status in (200, 404)
        # never in a URL: not in any request the page made, nor in the page's own address
        assert requests and not [r.url for r in requests if token in r.url or forged in r.url]
        assert token not in page.url
