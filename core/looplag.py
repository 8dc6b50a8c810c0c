"""Event-loop lag: a small task asks to wake every `interval` seconds and measures how late it
woke. A late wake-up means the loop was busy or blocked (slow work done on it), which delays
every signalling answer, DataChannel message and RTP packet the process sends. Each lag goes
to a histogram (/metrics) and to a one-minute window (its p99 makes /health degraded)."""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from typing import Any, Optional

from core.metrics import NOOP


class LoopLag:
    def __init__(self, histogram: Any = NOOP, interval: float = 0.25, window_s: float = 60.0) -> None:
        self.histogram = histogram
        self.interval = interval
        self.window_s = window_s
        self._samples: deque[tuple[float, float]] = deque()  # (when, lag s)
        self._task: Optional[asyncio.Task] = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="vg-loop-lag")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            start = time.monotonic()
            await asyncio.sleep(self.interval)
            now = time.monotonic()
            self.record(max(0.0, now - start - self.interval), now)

    def record(self, lag: float, now: float) -> None:
        self.histogram.observe(lag)
        self._samples.append((now, lag))
        while self._samples and now - self._samples[0][0] > self.window_s:
            self._samples.popleft()

    def recent_median(self, seconds: float) -> float:
        """The median lag of the last `seconds` (0 without samples): high only when the loop is
        late most of the time, not after one slow moment."""
        now = time.monotonic()
        lags = sorted(lag for when, lag in self._samples if now - when <= seconds)
        return lags[len(lags) // 2] if lags else 0.0

    def p99(self) -> float:
        """The 99th percentile of the lags in the last `window_s`, counted over a full window's
        worth of samples (`window_s / interval`): the k-th largest lag, k = 1 % of a full window
        (3 at the defaults). A process younger than the window therefore needs as many stalls as
        a full minute would (one slow moment at start-up is not a lagging loop); 0 before that."""
        now = time.monotonic()
        lags = sorted((lag for when, lag in self._samples if now - when <= self.window_s), reverse=True)
        k = max(1, math.ceil(0.01 * self.window_s / self.interval))
        return lags[k - 1] if len(lags) >= k else 0.0
