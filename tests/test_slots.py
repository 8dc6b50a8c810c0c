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
    t = threading.Thread(target=lambda: got.append(slot.wait_newer(0, timeout=10)))
    t.start()
    time.sleep(0.05)
    slot.put("frame")
    t.join(5)
    assert got == [(1, "frame")]
