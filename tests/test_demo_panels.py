"""The demo page's side panels in a real Chromium: the live events list with thumbnails, and
recordings (the Record button, the list, playing a finished MP4, the server's refusal shown)."""

from __future__ import annotations

import asyncio

import numpy as np

from chromium import ARTIFACTS, console_errors, not_blank
from conftest import running_server
from test_browser import AUTH_SECRET


async def test_demo_lists_events_live_newest_first_with_thumbnails(browser):
    image = np.full((480, 640, 3), 80, np.uint8)
    async with running_server() as (url, svc):
        first = await svc.events.emit("lobby", "person_seen", 2, image)
        page = await browser.new_page()
        await page.goto(url + "/demo")
        await page.wait_for_function("window.vg.events === 1 && "
                                     "document.getElementById('events-state').textContent === 'live'", timeout=15000)
        second = await svc.events.emit("lobby", "person_gone", 3, image)  # live, over the stream
        await page.wait_for_function("window.vg.events === 2", timeout=15000)
        ids = await page.evaluate("[...document.querySelectorAll('#events li')].map((li) => +li.dataset.id)")
        assert ids == [second["id"], first["id"]]
        await page.wait_for_function("[...document.querySelectorAll('#events img')].every("
                                     "(i) => i.complete && i.naturalWidth === 640)", timeout=15000)
        top = await page.text_content("#events li")
        assert "lobby" in top and "person gone (3)" in top
        await page.close()


async def test_demo_records_a_source_and_plays_the_recording(browser, vtest, tmp_path):
    async with running_server(MEDIA_DIR=vtest.parent, VIDEO_FILE_PATH="vtest.avi", RECORDINGS_DIR=tmp_path) as (url, svc):
        page = await browser.new_page()
        errors = console_errors(page)
        await page.goto(url + "/demo")
        await page.wait_for_function("!document.getElementById('record').disabled && window.vg.recordingsLoads > 0")
        assert await page.text_content("#record") == "Record"
        assert await page.text_content("#recordings-state") == "none yet"
        await page.click("#record")
        await page.wait_for_function("document.getElementById('record').textContent.startsWith('Recording…')")
        assert await page.get_attribute("#record", "aria-pressed") == "true"
        assert await page.evaluate("document.querySelector('#recordings tbody tr').dataset.state") == "recording"
        assert await page.is_disabled("#recordings tbody tr .play")  # still being written
        await page.wait_for_function("/Recording… [3-9] s/.test(document.getElementById('record').textContent)",
                                     timeout=10000)  # the elapsed seconds count up
        await asyncio.sleep(1)
        await page.click("#record")  # stop
        await page.wait_for_function("document.querySelector('#recordings tbody tr')?.dataset.state === 'done'",
                                     timeout=15000)
        assert await page.text_content("#record") == "Record" and await page.is_hidden("#error")
        (row,) = await page.evaluate("window.vg.recordings")
        assert row["source"] == "default" and row["state"] == "done" and row["duration_s"] >= 3 and row["bytes"] > 0
        cells = await page.eval_on_selector_all("#recordings tbody td", "(tds) => tds.map((td) => td.textContent)")
        assert cells[0] == "default" and cells[2].endswith(" s") and cells[3].endswith(("KB", "MB")) and cells[4] == "done"
        assert await page.evaluate("document.createElement('video').canPlayType('video/mp4; codecs=\"avc1.42E01F\"')")
        await page.click("#recordings tbody tr .play")
        await page.wait_for_function("document.getElementById('playback').duration > 0", timeout=15000)
        duration = await page.evaluate("document.getElementById('playback').duration")
        assert abs(duration - row["duration_s"]) < 1.5, (duration, row["duration_s"])
        await page.wait_for_function("document.getElementById('playback').currentTime > 1", timeout=15000)
        state = await page.evaluate("(({currentTime, paused, muted, videoWidth, src}) =>"
                                    " ({currentTime, paused, muted, videoWidth, src}))(document.getElementById('playback'))")
        assert not state["paused"] and state["muted"] and state["videoWidth"] == 640, state
        assert state["src"] == url + row["download_url"]
        ARTIFACTS.mkdir(exist_ok=True)
        assert not_blank(await page.locator("#playback").screenshot(path=str(ARTIFACTS / "demo-recording.png"))) > 10
        assert errors == [], errors
        await page.close()


async def test_demo_record_button_shows_the_servers_refusal(browser):
    from api.tokens import mint_token

    viewer = mint_token(AUTH_SECRET, "carol", "view", 600)
    async with running_server(AUTH_MODE="jwt", JWT_SECRET=AUTH_SECRET) as (url, svc):
        page = await browser.new_page()
        await page.goto(url + "/demo")
        await page.evaluate(f"sessionStorage.setItem('visionguard.token', '{viewer}')")
        await page.reload()
        await page.wait_for_function("!document.getElementById('record').disabled && window.vg.recordingsLoads > 0")
        await page.click("#record")  # a `view` token may list recordings but not start one
        await page.wait_for_function("!document.getElementById('error').hidden", timeout=10000)
        message = await page.text_content("#error")
        assert "403" in message and "admin" in message, message
        assert await page.text_content("#record") == "Record" and not await page.is_disabled("#record")
        assert svc.recordings.store.list(None) == []
        await page.close()


async def test_demo_events_carry_on_after_their_signed_stream_url_expires(browser):
    """With access control on, the event stream's signed URL expires (SIGNED_URL_TTL_S): the
    server ends the stream, EventSource's reconnect with the old URL is refused, and the page
    asks for a fresh URL and carries on after the last event it showed (VG.EventFeed)."""
    from api.tokens import mint_token

    token = mint_token(AUTH_SECRET, "alice", "view", 600)
    image = np.full((480, 640, 3), 80, np.uint8)
    async with running_server(AUTH_MODE="jwt", JWT_SECRET=AUTH_SECRET, SIGNED_URL_TTL_S=10) as (url, svc):
        first = await svc.events.emit("lobby", "person_seen", 1, image)
        page = await browser.new_page()
        lists = []  # the /api/events requests: the first, then one per fresh stream URL
        page.on("request", lambda r: lists.append(r.url) if "/api/events?" in r.url else None)
        await page.add_init_script(f"sessionStorage.setItem('visionguard.token', {token!r})")
        await page.goto(url + "/demo")
        await page.wait_for_function("window.vg.events === 1 && "
                                     "document.getElementById('events-state').textContent === 'live'", timeout=15000)
        for _ in range(600):  # the URL expires after 10 s; the refused reconnect, then 3 s more
            if len(lists) >= 2:
                break
            await asyncio.sleep(0.1)
        assert len(lists) >= 2 and f"since={first['id']}" in lists[1], lists
        await page.wait_for_function("document.getElementById('events-state').textContent === 'live'", timeout=15000)
        second = await svc.events.emit("lobby", "person_gone", 0, image)  # over the fresh stream
        await page.wait_for_function("window.vg.events === 2", timeout=15000)
        ids = await page.evaluate("[...document.querySelectorAll('#events li')].map((li) => +li.dataset.id)")
        assert ids == [second["id"], first["id"]]
        assert await page.evaluate("window.vg.lastEventId") == second["id"]
        await page.close()
