"""Small thread-safe-enough counters for stats (one writer thread each)."""

from __future__ import annotations

import time
from collections import deque


class RateMeter:
    """Events per second over a sliding window."""

    def __init__(self, window_s: float = 2.0) -> None:
        self._window = window_s
        self._times: deque[float] = deque()

    def tick(self) -> None:
        now = time.monotonic()
        self._times.append(now)
        while self._times and now - self._times[0] > self._window:
            self._times.popleft()

    @property
    def rate(self) -> float:
        t = list(self._times)
        if len(t) < 2 or time.monotonic() - t[-1] > self._window:
            return 0.0
        return (len(t) - 1) / (t[-1] - t[0])
