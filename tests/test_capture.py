"""The capture loop's fault handling, driven by a scripted source (the capture is under test)."""

from __future__ import annotations

import time

import numpy as np

import sources.capture as capture_module
from sources.base import SourceError
from sources.capture import Capture
from sources.spec import SourceSpec


class Scripted:
    """A live source that fails to open `fail_opens` times, then serves frames until told to fail."""

    kind, paced, fps = "rtsp", False, 30.0

    def __init__(self, plan) -> None:
        self.plan = plan

    def open(self) -> None:
        if self.plan["fail_opens"] > 0:
            self.plan["fail_opens"] -= 1
            raise SourceError("cannot open rtsp://admin:hunter2@cam/stream: Connection refused")

    def read(self):
        if self.plan["break"]:
            self.plan["break"] = False
            raise SourceError("stream ended")
        time.sleep(0.01)
        return np.zeros((240, 320, 3), np.uint8)

    def close(self) -> None:
        pass


def wait_for(predicate, timeout=20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_backoff_grows_with_jitter_caps_and_resets_after_good_frames(monkeypatch):
    monkeypatch.setattr(capture_module, "RETRY_MIN_S", 0.05)
    monkeypatch.setattr(capture_module, "RESET_AFTER_S", 0.5)
    plan = {"fail_opens": 5, "break": False}
    cap = Capture(SourceSpec(name="t", kind="rtsp"), lambda: Scripted(plan), 160, 120, 30, retry_max_s=0.4)
    cap.start()
    try:
        assert wait_for(lambda: cap.state == "live")
        delays = list(cap.retry_delays)
        assert len(delays) == 5 and cap.opens == 1
        nominal = [0.05, 0.1, 0.2, 0.4, 0.4]  # doubles, capped at retry_max_s
        for got, want in zip(delays, nominal):
            assert 0.8 * want - 1e-9 <= got <= 1.2 * want + 1e-9, (delays, nominal)
        assert "***" in cap.last_error and "hunter2" not in cap.last_error
        assert cap.slot.peek()[1].image.shape == (120, 160, 3)  # resized to the output size
        time.sleep(0.7)  # good frames for longer than RESET_AFTER_S
        plan["break"] = True
        assert wait_for(lambda: len(cap.retry_delays) == 6)
        assert cap.retry_delays[-1] <= 0.06  # back to the minimum
        assert wait_for(lambda: cap.state == "live" and cap.opens == 2)
    finally:
        cap.stop()
    assert cap.state == "idle" and not cap.worker.alive


def test_states_failed_before_first_open_reconnecting_after():
    plan = {"fail_opens": 10**6, "break": False}
    cap = Capture(SourceSpec(name="t", kind="rtsp"), lambda: Scripted(plan), 160, 120, 30, retry_max_s=0.5)
    cap.start()
    try:
        assert wait_for(lambda: cap.state == "failed")
        plan["fail_opens"] = 0
        assert wait_for(lambda: cap.state == "live")
        plan.update({"break": True, "fail_opens": 10**6})
        assert wait_for(lambda: cap.state == "reconnecting")
    finally:
        cap.stop()
