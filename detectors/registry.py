"""The model registry: every model by name, loaded once on first use and shared by every
pipeline that uses it (onnxruntime sessions may be run from several threads), with its state
for /api/models."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from detectors.base import Processor
from detectors.edges import Edges
from detectors.passthrough import PassThrough


class ModelLoadError(Exception):
    """The model cannot be loaded; the message is safe to show."""


#: the `yolo` entry's error while MODEL_PATH is unset (nothing to load)
NEEDS_MODEL_PATH = "needs MODEL_PATH"


@dataclass
class ModelEntry:
    name: str
    type: str
    factory: Callable[[], Processor]
    state: str = "not_loaded"  # not_loaded | ready | error
    error: Optional[str] = None
    instance: Optional[Processor] = None
    mean_inference_ms: Optional[float] = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, ms: float) -> None:
        prev = self.mean_inference_ms
        self.mean_inference_ms = ms if prev is None else 0.95 * prev + 0.05 * ms

    @property
    def labels(self) -> list[str]:
        return list(getattr(self.instance, "labels", []) or [])


def _why_not(model_path: Optional[Path]) -> Optional[str]:
    """Why the `yolo` model cannot load, known without loading it (None: it may)."""
    if model_path is None:
        return NEEDS_MODEL_PATH
    if not model_path.is_file():  # a plain sentence, not onnxruntime's NO_SUCHFILE text
        return f"MODEL_PATH {model_path.name!r} was not found"
    return None


class ModelRegistry:
    def __init__(self, threshold: float, model_path: Optional[Path] = None,
                 labels_path: Optional[Path] = None, threads: int = 1) -> None:
        self.entries: dict[str, ModelEntry] = {}
        self.register("none", "passthrough", PassThrough)
        self.register("edges", "filter", Edges)
        self.register("person", "detector", lambda: _person(threshold, threads))
        self.register("yolo", "detector", lambda: _yolo(model_path, labels_path, threshold, threads),
                      unavailable=_why_not(model_path))

    def register(self, name: str, type_: str, factory: Callable[[], Processor],
                 unavailable: Optional[str] = None) -> None:
        """`unavailable`: why the model cannot load, known without trying (shown at once as its
        `error`, and never loaded)."""
        entry = self.entries[name] = ModelEntry(name, type_, factory)
        if unavailable:
            entry.state, entry.error = "error", unavailable

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def names(self) -> list[str]:
        return sorted(self.entries)

    def load(self, name: str) -> Processor:
        """The shared instance of `name`, loading it on first use (blocking: call off the loop)."""
        entry = self.entries[name]
        with entry.lock:
            if entry.state == "error":  # a failed load is not retried on every request
                raise ModelLoadError(f"Model {name!r} failed to load: {entry.error}")
            if entry.instance is None:
                try:
                    entry.instance = entry.factory()
                except Exception as exc:
                    # the reason in plain words: no Python class name in what people read
                    entry.state, entry.error = "error", str(exc).strip() or "it cannot be loaded"
                    raise ModelLoadError(f"Model {name!r} failed to load: {entry.error}") from None
                entry.state, entry.error = "ready", None
            return entry.instance

    def ready(self, name: str) -> Optional[ModelEntry]:
        """The entry of `name` if it is loaded (no blocking call needed), else None."""
        entry = self.entries.get(name)
        return entry if entry is not None and entry.state == "ready" else None

    def load_or_fallback(self, name: str) -> tuple[ModelEntry, str]:
        """The loaded model `name`, or `none` plus a notice to draw if `name` cannot load (blocking)."""
        try:
            self.load(name)
            return self.entries[name], ""
        except ModelLoadError:
            self.load("none")
            return self.entries["none"], f"model {name} unavailable"

    def info(self) -> list[dict]:
        return [{"name": e.name, "type": e.type, "state": e.state, "error": e.error,
                 "mean_inference_ms": None if e.mean_inference_ms is None else round(e.mean_inference_ms, 2),
                 "labels": e.labels} for e in self.entries.values()]


def _person(threshold: float, threads: int) -> Processor:
    from detectors.person import PersonDetector

    return PersonDetector(threshold, threads)


def _yolo(model_path: Optional[Path], labels_path: Optional[Path], threshold: float, threads: int) -> Processor:
    from detectors.yolo import YoloDetector

    if model_path is None:
        raise ModelLoadError(NEEDS_MODEL_PATH)
    return YoloDetector(model_path, labels_path, threshold, threads)
