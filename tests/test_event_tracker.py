"""Person events without a server: the visit tracker (fake frames, a fake clock), the event store
on disk, and which pipelines the event service follows."""

from __future__ import annotations

import json
from dataclasses import dataclass

from detectors.base import Detection
from events import EventStore, VisitTracker

HOLD_S = 1.0
BUFFER = 20


# -- the tracker alone ------------------------------------------------------------------------
@dataclass
class Frame:
    detections: list
    image: object = None


def person(score: float = 0.9) -> Detection:
    return Detection("person", score, (0, 0, 10, 10))


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def tracker() -> tuple[VisitTracker, list, Clock]:
    emitted, clock = [], Clock()
    return VisitTracker(HOLD_S, lambda *e: emitted.append(e), clock), emitted, clock


def test_a_single_frame_with_a_person_is_flicker():
    t, emitted, clock = tracker()
    for dets in ([person()], [], [person()], [Detection("car", 0.9, (0, 0, 1, 1))], [person()], []):
        t.on_frame(Frame(dets))
        clock.t += 0.1
    t.check()
    t.close()
    assert emitted == []


def test_two_frames_open_a_visit_and_the_hold_closes_it_with_the_peak_and_the_best_frame():
    t, emitted, clock = tracker()
    t.on_frame(Frame([person(0.6)], "first"))
    t.on_frame(Frame([person(0.6), person(0.7)], "second"))
    assert [e[:3] for e in emitted] == [("person_seen", 2, "second")]
    visit = emitted[0][3]
    t.on_frame(Frame([person(0.95), person(0.5), person(0.5)], "best"))
    t.on_frame(Frame([person(0.8)], "later"))
    last = clock.t
    t.on_frame(Frame([], "empty"))
    clock.t = last + HOLD_S - 0.01
    t.check()
    assert len(emitted) == 1, "not before the hold"
    clock.t = last + HOLD_S
    t.check()
    assert emitted[1] == ("person_gone", 3, "best", visit)
    t.check()
    t.close()
    assert len(emitted) == 2
    # a new visit needs 2 frames again, with a new id
    t.on_frame(Frame([person()], "x"))
    t.on_frame(Frame([person()], "y"))
    assert emitted[2][0] == "person_seen" and emitted[2][3] != visit


def test_frames_with_people_keep_the_visit_open_and_a_stop_closes_it_at_once():
    t, emitted, clock = tracker()
    for _ in range(2):
        t.on_frame(Frame([person()], "img"))
    for _ in range(10):  # persons every 0.5 s: never HOLD_S without one
        clock.t += 0.5
        t.on_frame(Frame([person()], "img"))
        t.check()
    assert [e[0] for e in emitted] == ["person_seen"]
    t.close()  # the pipeline stops
    assert [e[0] for e in emitted] == ["person_seen", "person_gone"] and emitted[0][3] == emitted[1][3]


def test_the_store_rotates_reloads_and_skips_corrupt_lines(tmp_path, caplog):
    path = tmp_path / "ev.jsonl"
    store = EventStore(3, path, max_file_bytes=400)
    for i in range(6):
        event = {"id": 0, "source": "s", "type": "person_seen", "ts": 1.0 + i, "count": 1, "visit_id": "v",
                 "snapshot_id": None}
        store.append_line(event, store.add(event))
    assert path.with_name("ev.jsonl.1").exists() and store.dropped == 3
    with open(path, "a") as f:
        f.write("{not json\n" + json.dumps({"id": "x"}) + "\n")
    again = EventStore(3, path)
    again.load()
    assert [e["id"] for e in again.events] == [4, 5, 6] and again.next_id == 7
    assert "skipped 2 corrupt" in caplog.text


def test_an_unwritable_folder_keeps_events_in_memory(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    store = EventStore(10, blocker / "events.jsonl")  # its folder is a file
    assert store.write_snapshot("0123456789abcdef", b"jpeg") is False
    store.append_line({"id": 1, "source": "s", "type": "person_seen", "ts": 1.0, "count": 1})
    assert not store.disk_ok and caplog.text.count("kept in memory only") == 1


class FakePipeline:
    def __init__(self, name: str, model: str = "person", kind: str = "file") -> None:
        from sources import SourceSpec

        self.capture = type("C", (), {"spec": SourceSpec(name=name, kind=kind)})()
        self.model = model
        self.listeners: list = []

    def add_listener(self, fn) -> None:
        self.listeners.append(fn)

    def remove_listener(self, fn) -> None:
        self.listeners.remove(fn)


async def test_one_pipeline_per_source_is_followed_and_cameras_and_offer_files_never():
    from events import EventService

    labels = {"person": ["person"], "yolo": ["person", "car"], "edges": [], "none": []}
    service = EventService(EventStore(10), HOLD_S, BUFFER, labels=lambda m: labels[m])
    a, b = FakePipeline("lobby", "person"), FakePipeline("lobby", "yolo")
    ignored = [FakePipeline("camera-1234", "person", kind="camera"), FakePipeline("file:clip.mp4", "person"),
               FakePipeline("hall", "edges"), FakePipeline("hall", "unknown-model")]
    for p in [a, b] + ignored:
        service.watch(p, True)
    assert (a.listeners, b.listeners) == ([a.listeners[0]], []) and all(not p.listeners for p in ignored)
    assert service.stats()["followed"] == ["lobby"]
    # a visit open on `a` ends when `a` stops; `b` is followed from then on
    for _ in range(2):
        a.listeners[0](Frame([person()], None))
    service.watch(a, False)
    assert not a.listeners and len(b.listeners) == 1
    assert [job.type for job in [service._jobs.get_nowait() for _ in range(2)]] == ["person_seen", "person_gone"]
    service.watch(b, False)
    assert service.stats()["followed"] == [] and not b.listeners
