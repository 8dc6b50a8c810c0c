"""Frame processors ("models"), found by name in a registry.

Each one is a class with `process(frame) -> (frame, detections)`: a detector returns the
frame untouched with what it found; a filter (`edges`) returns new pixels and finds nothing.
Drawing boxes and the status band is one shared step after it (`pipeline/overlay.py`)."""

from detectors.base import Detection, Processor
from detectors.registry import ModelEntry, ModelLoadError, ModelRegistry

__all__ = ["Detection", "Processor", "ModelEntry", "ModelLoadError", "ModelRegistry"]
