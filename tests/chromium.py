"""Debian's Chromium for the browser tests: where it is, the flags this box needs (loopback ICE, a
fake camera) and small page helpers. The `browser` fixture (tests/conftest.py) launches it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import cv2
import numpy as np

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--allow-loopback-in-peer-connection",
         "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]


async def frames_decoded(page) -> int:
    return await page.evaluate("""async () => {
        const pc = window.vg.peer();
        if (!pc) return 0;
        let n = 0;
        (await pc.getStats()).forEach((s) => { if (s.type === "inbound-rtp" && s.kind === "video") n = s.framesDecoded; });
        return n;
    }""")


async def playing_rate(page, seconds: float = 5.0) -> float:
    a = await frames_decoded(page)
    await asyncio.sleep(seconds)
    return (await frames_decoded(page) - a) / seconds


def not_blank(png: bytes, box=None) -> float:
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    return float(image.std())


def console_errors(page) -> list[str]:
    """The page's console errors and uncaught exceptions, collected from now on."""
    errors: list[str] = []
    page.on("console", lambda m: m.type == "error" and errors.append(f"{m.text} ({m.location.get('url')})"))
    page.on("pageerror", lambda e: errors.append(str(e)))
    return errors
