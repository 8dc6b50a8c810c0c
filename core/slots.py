"""Hand-offs between the pipeline's threads, none of which can grow.

`LatestSlot`: a writer overwrites; a reader asks for anything newer than what it last saw, so a
slow reader skips stale values instead of falling behind. `LoopHandoff`: the same idea from a
worker thread to a callback on the event loop.
"""

from __future__ import annotations

import threading
from typing import Generic, Optional, TypeVar

T = TypeVar("T")


class LatestSlot(Generic[T]):
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._seq = 0
        self._value: Optional[T] = None
        self.waiting = 0  # readers blocked in wait_newer (lets tests order threads without sleeping)

    def put(self, value: T) -> int:
        with self._cond:
            self._seq += 1
            self._value = value
            self._cond.notify_all()
            return self._seq

    def peek(self) -> tuple[int, Optional[T]]:
        with self._cond:
            return self._seq, self._value

    def wait_newer(self, seen: int, timeout: float) -> tuple[int, Optional[T]]:
        """Block until a value newer than `seen` arrives (or `timeout`); return (seq, value)."""
        with self._cond:
            self.waiting += 1
            try:
                self._cond.wait_for(lambda: self._seq > seen, timeout)
            finally:
                self.waiting -= 1
            return self._seq, self._value

    def wake(self) -> None:
        """Wake blocked readers (used on shutdown)."""
        with self._cond:
            self._cond.notify_all()


class LoopHandoff(Generic[T]):
    """Latest-value hand-off from a worker thread to a callback on an asyncio loop.

    At most one delivery is scheduled at a time; a value put while one is pending replaces
    it, so a busy loop receives the newest value instead of a backlog."""

    def __init__(self, loop, callback) -> None:
        self._loop = loop
        self._callback = callback
        self._lock = threading.Lock()
        self._value: Optional[T] = None
        self._scheduled = False

    def put(self, value: T) -> None:
        with self._lock:
            self._value = value
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # loop closed during shutdown
            pass

    def _deliver(self) -> None:
        with self._lock:
            value, self._value = self._value, None
            self._scheduled = False
        if value is not None:
            self._callback(value)
