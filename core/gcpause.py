"""Keep the garbage collector's full passes short: they stop every Python thread.

CPython's full (generation 2) collection walks every tracked object in the process. Once the
app and its default model are built that is well over 100,000 objects (FastAPI, aiortc,
onnxruntime's Python side, the settings, the routes), none of which ever becomes garbage; one
pass over them was measured at 178 ms on this box: a stall of the event loop that sends every
viewer's packets, of the clock thread and of the offer being answered. `freeze_startup_heap()`
moves them into the permanent generation (`gc.freeze`), so later passes walk only what sources,
sessions and frames allocated since."""

from __future__ import annotations

import gc


def freeze_startup_heap() -> int:
    """Collect once, then exempt every surviving object from later passes; returns how many."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def thaw() -> None:
    """Undo `freeze_startup_heap` at shutdown: an app made and stopped in a longer-lived process
    (tests, `create_app` embedded) can then be collected."""
    gc.unfreeze()
