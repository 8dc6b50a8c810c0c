"""Give freed heap memory back to the operating system.

A pipeline that stops frees many frame-sized buffers; glibc's allocator keeps such memory for
reuse, so the process's RSS reflects its high-water mark rather than what is in use. Trimming
when a pipeline stops keeps RSS close to what live sessions need. Elsewhere than glibc it does
nothing."""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Optional

_libc: Optional[ctypes.CDLL] = None
_looked = False


def trim_heap() -> bool:
    """Return free heap pages to the OS (glibc `malloc_trim`); False where unavailable."""
    global _libc, _looked
    if not _looked:
        _looked = True
        name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(name) if name else None
            _libc = libc if libc is not None and hasattr(libc, "malloc_trim") else None
        except OSError:
            _libc = None
    return bool(_libc is not None and _libc.malloc_trim(0))
