"""Frame processors ("models"), found by name in a registry.

Each one is a class with `process(frame) -> (frame, detections)`: a detector returns the
frame untouched with what it found; a filter may return new pixels and find nothing.
Drawing boxes and the status band is one shared step after it (`overlay.py`)."""

from detectors.base import Detection, Processor
from detectors.registry import REGISTRY, create

__all__ = ["Detection", "Processor", "REGISTRY", "create"]
