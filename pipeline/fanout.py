"""Processing results to the event loop: the process thread publishes each result, a one-deep
hand-off (newest wins) delivers it on the loop, and every listener (a session's `detections`
DataChannel) is called with it. One listener that raises never starves the others."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable, Generic, Optional, TypeVar

from core.slots import LoopHandoff

log = logging.getLogger("visionguard.pipeline")

T = TypeVar("T")


class ResultFanout(Generic[T]):
    def __init__(self) -> None:
        self._listeners: list[Callable[[T], None]] = []
        self._handoff: Optional[LoopHandoff[T]] = None
        self.listener_errors = 0
        self._last_log = 0.0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._handoff = LoopHandoff(loop, self._deliver)

    def stop(self) -> None:
        """Forget listeners and the hand-off (whose callback is a bound method: a cycle)."""
        self._handoff = None
        self._listeners = []

    # -- event loop side --------------------------------------------------------------
    def add(self, listener: Callable[[T], None]) -> None:
        self._listeners.append(listener)

    def remove(self, listener: Callable[[T], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _deliver(self, result: T) -> None:
        for listener in list(self._listeners):
            try:
                listener(result)
            except Exception:
                self.listener_errors += 1
                now = time.monotonic()
                if now - self._last_log > 10.0:  # one broken listener must not flood the log
                    self._last_log = now
                    log.exception("a result listener failed (%d so far)", self.listener_errors)

    # -- process thread ---------------------------------------------------------------
    def publish(self, result: T) -> None:
        if self._listeners and self._handoff is not None:
            self._handoff.put(result)
