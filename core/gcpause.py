"""Keep the garbage collector's full passes short: they stop every Python thread.

CPython's full (generation 2) collection walks every tracked object in the process. Once the
app and its default model are built that is well over 100,000 objects (FastAPI, aiortc,
onnxruntime's Python side, the settings, the routes), none of which ever becomes garbage; one
pass over them was measured at 178 ms on this box: a stall of the event loop that sends every
viewer's packets, of the clock thread and of the offer being answered. `freeze_startup_heap()`
moves them into the permanent generation (`gc.freeze`), so later passes walk only what sources,
sessions and frames allocated since.

The freeze is process-wide, so it is counted: with several apps in one process (tests, apps
embedded side by side), the heap thaws when the last of them stops, not when the first does."""

from __future__ import annotations

import gc
import threading

_lock = threading.Lock()
_holders = 0  # running apps that froze the heap


def freeze_startup_heap() -> int:
    """Collect once, then exempt every surviving object from later passes; returns how many."""
    global _holders
    gc.collect()  # outside the lock: a finaliser it runs may reach thaw()
    with _lock:
        _holders += 1
        gc.freeze()
        return gc.get_freeze_count()


def thaw() -> None:
    """Undo `freeze_startup_heap` at shutdown, once no other app in the process holds it: an app
    made and stopped in a longer-lived process (tests, `create_app` embedded) can then be
    collected."""
    global _holders
    with _lock:
        _holders = max(0, _holders - 1)
        if _holders == 0:
            gc.unfreeze()
