"""The latest-value slot: readers skip stale values, nothing queues."""

import threading
import time

from core.slots import LatestSlot


def test_reader_gets_only_the_newest_value():
    slot = LatestSlot()
    for i in range(100):
        slot.put(i)
    seq, value = slot.wait_newer(0, timeout=1)
    assert (seq, value) == (100, 99)
    seq2, _ = slot.wait_newer(seq, timeout=0.05)  # nothing newer: returns after the timeout
    assert seq2 == seq


def test_waiting_reader_wakes_on_put():
    slot = LatestSlot()
    got = []
    # a reader that is not woken by `put` would sit out its whole 60 s timeout
    t = threading.Thread(target=lambda: got.append(slot.wait_newer(0, timeout=60)), daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while slot.waiting == 0:  # until the reader is blocked in wait_newer (no sleep-and-hope)
        assert time.monotonic() < deadline, "the reader never started waiting"
        time.sleep(0.001)
    slot.put("frame")
    t.join(10)
    assert not t.is_alive(), "put did not wake the waiting reader"
    assert got == [(1, "frame")] and slot.waiting == 0
