"""The React example (examples/react, built with Vite) in a real Chromium, served from another
origin than the API: it plays, and its `token` prop travels as an Authorization header."""

from __future__ import annotations

import contextlib
import functools
import http.server
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from chromium import ARTIFACTS, not_blank
from conftest import ROOT, running_server
from test_browser import AUTH_SECRET, wait_gone

REACT = ROOT / "examples" / "react"


@pytest.fixture(scope="module")
def react_dist() -> Path:
    """The React example, built with Vite (`npm ci && npm run build`; make test does it first)."""
    dist = REACT / "dist" / "index.html"
    if not dist.exists():
        if not shutil.which("npm"):
            pytest.fail("npm is missing: the React example cannot be built")
        subprocess.run("npm ci --no-audit --no-fund && npm run build", shell=True, cwd=REACT, check=True,
                       timeout=600)
    return dist.parent


@contextlib.contextmanager
def static_site(root: Path):
    """Serve the built example on a port of its own (another origin than the API): yields its URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    static = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=static.serve_forever, name="static-server", daemon=True).start()
    try:
        yield f"http://127.0.0.1:{static.server_port}"
    finally:
        static.shutdown()


async def test_react_example_on_another_origin_plays(browser, react_dist):
    with static_site(react_dist) as site:
        async with running_server() as (url, svc):
            page = await browser.new_page()
            await page.goto(f"{site}/index.html?backend={url}")
            await page.click("text=Connect")
            await page.wait_for_function("document.querySelector('video').videoWidth === 640", timeout=30000)
            await page.wait_for_function("document.querySelector('[data-testid=frame]').textContent !== 'frame: -'",
                                         timeout=15000)
            assert await page.text_content("[data-testid=status]") == "connected"
            (session,) = svc.sessions.sessions.values()
            ARTIFACTS.mkdir(exist_ok=True)
            assert not_blank(await page.locator("video").screenshot(path=str(ARTIFACTS / "react.png"))) > 10
            await page.click("text=Disconnect")
            assert await wait_gone(svc, session.id)  # DELETE /api/session/{id} ends it at once
            assert svc.sessions.sessions == {}


async def test_react_example_sends_its_token_prop_as_an_authorization_header(browser, react_dist):
    from api.tokens import mint_token

    token = mint_token(AUTH_SECRET, "bob", "view", 600)
    with static_site(react_dist) as site:
        async with running_server(AUTH_MODE="jwt", JWT_SECRET=AUTH_SECRET) as (url, svc):
            page = await browser.new_page()
            requests = []
            page.on("request", lambda request: requests.append(request))
            await page.goto(f"{site}/index.html?backend={url}")
            await page.click("text=Connect")  # no token: the server's reason
            await page.wait_for_function("document.querySelector('[data-testid=status]').textContent === 'error'",
                                         timeout=15000)
            assert "401" in await page.text_content("[role=alert]")
            await page.fill("[data-testid=token]", token)
            await page.click("text=Connect")  # across origins: the preflight lets Authorization through
            await page.wait_for_function("document.querySelector('video').videoWidth === 640", timeout=30000)
            (session,) = svc.sessions.sessions.values()
            assert session.owner == "bob"
            assert await page.evaluate("sessionStorage.getItem('visionguard.token')") == token
            await page.click("text=Disconnect")
            assert await wait_gone(svc, session.id)
            delete = next(r for r in requests if r.method == "DELETE")
            assert (await delete.all_headers())["authorization"] == f"Bearer {token}"
            assert (await delete.response()).status == 200
            assert not [r.url for r in requests if token in r.url]
