"""The start-up self-check shared by the compat modules: each lists the private internals it
relies on with a probe, and start-up stops with one line naming the first one missing."""

from __future__ import annotations

from typing import Callable


class IncompatibleLibrary(SystemExit):
    """Start-up stops: an internal this project relies on is gone (a clean exit with one line)."""


def check_internals(library: str, version: str, pinned: str, internals: dict[str, Callable[[], bool]]) -> None:
    """Raise IncompatibleLibrary (one line) if a probe in `internals` fails or cannot run."""
    for name, present in internals.items():
        try:
            ok = present()
        except Exception:  # a probe that cannot even run means the internal has changed
            ok = False
        if not ok:
            raise IncompatibleLibrary(
                f"Incompatible {library} {version}: internal {name} is missing; "
                f"this version of VisionGuard needs {pinned} (pip install -r requirements.txt)")
