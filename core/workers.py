"""Named worker threads that survive bad input.

A `Worker` calls `step()` over and over in a thread named `vg-…`. An exception in one
step is recorded and logged (rate-limited) and the loop goes on. If the thread dies anyway
(a BaseException), the watchdog calls `ensure_alive()`, which starts it again.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Optional

log = logging.getLogger("visionguard.workers")


class Worker:
    def __init__(self, name: str, step: Callable[[], None], on_error: Optional[Callable[[str], None]] = None):
        self.name = name if name.startswith("vg-") else f"vg-{name}"
        self._step = step
        self._on_error = on_error
        self.stop_event = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.errors = 0
        self.restarts = 0
        self.last_error: Optional[str] = None
        self._last_log = 0.0

    def start(self) -> None:
        self.stop_event.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def record(self, message: str) -> None:
        """Count and keep a fault (also used by parts that run inside this thread's step)."""
        self.errors += 1
        self.last_error = message
        now = time.monotonic()
        if now - self._last_log > 5.0:  # a broken source must not flood the log
            self._last_log = now
            log.warning("%s: %s", self.name, message)
        if self._on_error:
            self._on_error(message)

    def _run(self) -> None:
        try:
            while not self.stop_event.is_set():
                try:
                    self._step()
                except Exception as exc:  # one bad frame or call never ends the loop
                    self.record(f"{type(exc).__name__}: {exc}")
                    self.stop_event.wait(0.05)  # no hot loop on a persistent fault
        except BaseException as exc:
            self.record(f"thread died: {type(exc).__name__}: {exc}")

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def ensure_alive(self) -> bool:
        """Restart a dead thread (unless stopping). Returns True if it restarted it."""
        if self.stop_event.is_set() or self._thread is None or self._thread.is_alive():
            return False
        self.restarts += 1
        log.warning("%s: restarting dead thread", self.name)
        self.start()
        return True

    def stop(self, timeout: float = 5.0) -> None:
        self.stop_event.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
