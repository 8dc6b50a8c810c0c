"""Named worker threads that survive bad input, with a watchdog's view of them.

A `Worker` calls `step()` over and over in a thread named `vg-…`. An exception in one step is
recorded and logged (rate-limited) and the loop goes on. The watchdog calls `ensure_alive()`
about twice a second: a thread that died (a BaseException) is started again, and so is one
stuck inside a single step for longer than `stuck_after` seconds (the stuck thread is left to
finish its step and then exits: Python cannot kill a thread). Restarts are rate-limited: after
`MAX_RESTARTS` in `RESTART_WINDOW_S` the worker is left down and reported as `flapping` until
the window has passed.

`start`, `stop` and `ensure_alive` share one lock, and `stop` is one-way: once stopped, nothing
starts the worker again. `on_exit` runs in the thread itself when it ends (a capture closes its
own source there, so nothing closes a container another thread is still reading).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Callable, Optional

log = logging.getLogger("visionguard.workers")

MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
JOIN_TIMEOUT_S = 5.0


class Worker:
    def __init__(self, name: str, step: Callable[[], None], on_error: Optional[Callable[[str], None]] = None,
                 on_exit: Optional[Callable[[], None]] = None, stuck_after: Optional[float] = None):
        self.name = name if name.startswith("vg-") else f"vg-{name}"
        self._step = step
        self._on_error = on_error
        self._on_exit = on_exit
        self.stuck_after = stuck_after
        self.stop_event = threading.Event()
        self._lock = threading.Lock()
        self._stopped = False
        self._generation = 0  # a restart makes the running thread's generation stale: it exits
        self._thread: Optional[threading.Thread] = None
        self.last_progress = time.monotonic()  # when the current step began
        self.errors = 0
        self.restarts = 0
        self._restart_times: deque[float] = deque()
        self.last_error: Optional[str] = None
        self._last_log = 0.0

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            if self._stopped:
                raise RuntimeError(f"{self.name} was stopped; it cannot start again")
            self._spawn()

    def _spawn(self) -> None:
        self._generation += 1
        self.last_progress = time.monotonic()
        self._thread = threading.Thread(target=self._run, args=(self._generation,), name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = JOIN_TIMEOUT_S) -> None:
        """Stop for good and join the thread (blocking: call it off the event loop)."""
        with self._lock:
            self._stopped = True
            self.stop_event.set()
            thread = self._thread
        if thread is None:  # never started (a camera-mode clock): drop the step, no cycle keeps the owner
            self._step = self._on_error = self._on_exit = None
            return
        if thread is threading.current_thread():
            return
        thread.join(timeout)
        if thread.is_alive():
            log.warning("%s did not stop within %.0f s; it ends on its own after its current step", self.name, timeout)
        else:  # the step is usually a bound method of the owner: drop it so no cycle keeps the owner
            self._step = self._on_error = self._on_exit = None

    def is_current(self) -> bool:
        """Whether the calling thread is this worker's current thread (not one a restart left
        behind to finish its step): a stale thread must not publish what it finishes."""
        return threading.current_thread() is self._thread and not self.stop_event.is_set()

    def _current(self, generation: int) -> bool:
        return generation == self._generation and not self.stop_event.is_set()

    def _run(self, generation: int) -> None:
        try:
            while self._current(generation):
                self.last_progress = time.monotonic()
                try:
                    self._step()
                except Exception as exc:  # one bad frame or call never ends the loop
                    self.record(f"{type(exc).__name__}: {exc}")
                    self.stop_event.wait(0.05)  # no hot loop on a persistent fault
        except BaseException as exc:
            self.record(f"thread died: {type(exc).__name__}: {exc}")
        finally:
            on_exit = self._on_exit
            if on_exit is not None and generation == self._generation:
                try:
                    on_exit()
                except Exception:
                    log.exception("%s: clean-up failed", self.name)

    def record(self, message: str) -> None:
        """Count and keep a fault (also used by parts that run inside this thread's step)."""
        self.errors += 1
        self.last_error = message
        now = time.monotonic()
        if now - self._last_log > 5.0:  # a broken source must not flood the log
            self._last_log = now
            log.warning("%s: %s", self.name, message)
        on_error = self._on_error
        if on_error:
            on_error(message)

    # -- the watchdog's view ------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def flapping(self) -> bool:
        """Restarted MAX_RESTARTS times within RESTART_WINDOW_S (and left down meanwhile)."""
        with self._lock:
            self._forget_old_restarts(time.monotonic())
            return len(self._restart_times) >= MAX_RESTARTS

    def _forget_old_restarts(self, now: float) -> None:
        while self._restart_times and now - self._restart_times[0] > RESTART_WINDOW_S:
            self._restart_times.popleft()

    def ensure_alive(self) -> Optional[str]:
        """Restart a dead or stuck thread (never a stopped one), within the rate limit.
        Returns why it restarted, or None."""
        with self._lock:
            if self._stopped or self._thread is None:
                return None
            now = time.monotonic()
            if not self._thread.is_alive():
                why = "its thread died"
            elif self.stuck_after is not None and now - self.last_progress > self.stuck_after:
                why = f"no progress for {now - self.last_progress:.0f} s"
            else:
                return None
            self._forget_old_restarts(now)
            if len(self._restart_times) >= MAX_RESTARTS:
                return None  # flapping: left down until the window has passed
            self._restart_times.append(now)
            self.restarts += 1
            self.record(f"restarted: {why}")
            self._spawn()
            return why
