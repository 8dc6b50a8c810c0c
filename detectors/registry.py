from __future__ import annotations

from typing import Callable

from detectors.base import Processor
from detectors.passthrough import PassThrough

REGISTRY: dict[str, Callable[[], Processor]] = {
    "none": PassThrough,
}


def create(name: str) -> Processor:
    try:
        return REGISTRY[name]()
    except KeyError:
        raise ValueError(f"unknown model {name!r}") from None
