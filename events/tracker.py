"""`VisitTracker`: the visits of one source, from its processing results (on the event loop).

- `person_seen` once 2 consecutive processed frames have at least one `person` (a single
  frame's flicker is ignored); it carries the person count and the image of that second frame.
- The visit stays open while frames with persons keep coming; `person_gone` once `hold_s`
  passed since the last one (`check`, called periodically, so it fires when frames stop too),
  or at once when the pipeline stops (`close`). It carries the visit's peak count and the
  image of its highest-scoring frame (the best person score). Both share a `visit_id`.

No I/O here: `emit(type, count, image, visit_id)` is called and returns at once.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Callable, Optional

import numpy as np

PERSON = "person"
SEEN, GONE = "person_seen", "person_gone"
CONFIRM_FRAMES = 2  # consecutive frames with a person before a visit opens

Emit = Callable[[str, int, Optional[np.ndarray], str], None]


class VisitTracker:
    def __init__(self, hold_s: float, emit: Emit, clock: Callable[[], float] = time.monotonic) -> None:
        self.hold_s = hold_s
        self.emit = emit
        self.clock = clock
        self.streak = 0  # consecutive frames with a person
        self.visit_id: Optional[str] = None
        self.last_person = 0.0  # clock() at the last frame with a person
        self.peak = 0
        self.best_score = -1.0
        self.best_image: Optional[np.ndarray] = None

    @property
    def open(self) -> bool:
        return self.visit_id is not None

    def on_frame(self, frame: Any) -> None:
        """A processing result (`pipeline.frames.ProcessedFrame`-like: `.detections`, `.image`)."""
        scores = [d.score for d in frame.detections if d.label == PERSON]
        if not scores:
            self.streak = 0
            return
        self.streak += 1
        now = self.clock()
        if self.visit_id is not None:
            self.last_person = now
            self.peak = max(self.peak, len(scores))
            if max(scores) > self.best_score:
                self.best_score, self.best_image = max(scores), frame.image
        elif self.streak >= CONFIRM_FRAMES:
            self.visit_id = uuid.uuid4().hex[:12]
            self.last_person = now
            self.peak = len(scores)
            self.best_score, self.best_image = max(scores), frame.image
            self.emit(SEEN, len(scores), frame.image, self.visit_id)

    def check(self) -> None:
        """End the visit if no person was seen for `hold_s` (call it periodically)."""
        if self.visit_id is not None and self.clock() - self.last_person >= self.hold_s:
            self.close()

    def close(self) -> None:
        """End the open visit now (the pipeline stops); nothing happens without one."""
        self.streak = 0
        if self.visit_id is None:
            return
        visit_id, peak, image = self.visit_id, self.peak, self.best_image
        self.visit_id, self.peak, self.best_score, self.best_image = None, 0, -1.0, None
        self.emit(GONE, peak, image, visit_id)
