"""The recordings on disk: `<RECORDINGS_DIR>/<id>.mp4` and its JSON sidecar `<id>.json`.

The sidecar (source, trigger, start, end, state, error, ...) is written when a recording starts
and when it ends, atomically (a temporary file renamed over it), so the list is rebuilt from the
sidecars after a restart. A sidecar still saying `recording` at start-up means the process died
while writing: that file becomes `done` with the duration it really plays (fragmented MP4 plays up
to its last complete fragment), or `failed` if it does not open.

Ids are `uuid4().hex` and are checked (`valid_id`) before any path is made from them: a client
never names a file. Every method is thread-safe (writer threads and the event loop share it).
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional

from recording.mp4 import probe

log = logging.getLogger("visionguard.recordings")

ID = re.compile(r"^[0-9a-f]{32}$")
STATES = ("recording", "done", "failed")


def valid_id(recording_id: str) -> bool:
    return bool(ID.fullmatch(recording_id))


@dataclass
class RecordingInfo:
    recording_id: str
    source: str
    trigger: str  # manual | session | continuous | event
    started_at: float  # Unix seconds
    ended_at: Optional[float] = None
    duration_s: float = 0.0
    bytes: int = 0
    frames: int = 0
    state: str = "recording"
    error: Optional[str] = None
    owner: Optional[str] = None  # the subject whose session was recorded (trigger `session`)
    model: Optional[str] = None
    dropped_frames: int = 0
    node: Optional[str] = None  # the cluster worker writing it (REDIS_URL); None: a single process

    def copy(self) -> "RecordingInfo":
        return replace(self)


STATES = ("recording", "done", "failed")
TRIGGERS = ("manual", "session", "continuous", "event")
_NUMBERS = ("duration_s", "bytes", "frames", "dropped_frames")


def _parse(raw: object, recording_id: str) -> RecordingInfo:
    """A sidecar's JSON as a RecordingInfo, or ValueError if any field is not what it should be."""
    if not isinstance(raw, dict):
        raise ValueError("not a JSON object")
    fields = {k: v for k, v in raw.items() if k in RecordingInfo.__dataclass_fields__}
    info = RecordingInfo(**{**fields, "recording_id": recording_id})
    numbers_ok = all(isinstance(getattr(info, n), (int, float)) and not isinstance(getattr(info, n), bool)
                     for n in ("started_at", *_NUMBERS))
    if (not numbers_ok or not isinstance(info.source, str) or info.state not in STATES
            or info.trigger not in TRIGGERS or not isinstance(info.ended_at, (int, float, type(None)))
            or not all(isinstance(v, (str, type(None))) for v in (info.error, info.owner, info.model, info.node))):
        raise ValueError("a field has the wrong type or value")
    return info


class RecordingStore:
    def __init__(self, directory: Path, node_id: Optional[str] = None) -> None:
        self.dir = directory
        #: in a cluster, the workers of one box share the folder: a sidecar another live worker is
        #: still writing is not a crash remnant (see `load` and `refresh_foreign`)
        self.node_id = node_id
        self._items: dict[str, RecordingInfo] = {}
        self._lock = threading.Lock()
        self.changes = 0  # grows whenever a recording ends or goes (retention runs after)

    # -- paths -------------------------------------------------------------------------
    def video_path(self, recording_id: str) -> Path:
        if not valid_id(recording_id):
            raise ValueError("not a recording id")
        return self.dir / f"{recording_id}.mp4"

    def _sidecar(self, recording_id: str) -> Path:
        return self.dir / f"{recording_id}.json"

    # -- start-up (blocking) ----------------------------------------------------------
    # (sidecars are checked field by field by `_parse`: a hand-edited or half-written one is skipped)
    def load(self, live_writers: Optional[set] = None) -> int:
        """Read every sidecar in the folder; finish the ones a crash left `recording` (in a
        cluster: not those of another worker in `live_writers`, or of any other worker when that
        is not known). Returns how many recordings there are (the folder is made by the first one)."""
        if not self.dir.is_dir():
            return 0
        found: dict[str, RecordingInfo] = {}
        for sidecar in sorted(self.dir.glob("*.json")):
            if not valid_id(sidecar.stem):
                continue
            try:
                info = _parse(json.loads(sidecar.read_text()), sidecar.stem)
                if info.state == "recording" and not self._written_elsewhere(info, live_writers):
                    self._recover(info)
            except Exception as exc:  # one odd file never stops the start-up nor breaks the list
                log.warning("recordings: skipping unreadable sidecar %s (%s)", sidecar.name, exc)
                continue
            found[info.recording_id] = info
        with self._lock:
            self._items.update(found)
        return len(found)

    def _written_elsewhere(self, info: RecordingInfo, live_writers: Optional[set]) -> bool:
        if info.node is None or info.node == self.node_id:
            return False  # ours (or a single process's): if it says `recording`, a crash cut it
        return live_writers is None or info.node in live_writers

    def refresh_foreign(self, live_writers: Optional[set]) -> None:
        """Re-read the sidecars of recordings other workers were writing: finished since, or cut
        by that worker's death (then finished here)."""
        with self._lock:
            foreign = [i.recording_id for i in self._items.values()
                       if i.state == "recording" and i.node is not None and i.node != self.node_id]
        for recording_id in foreign:
            try:
                info = _parse(json.loads(self._sidecar(recording_id).read_text()), recording_id)
                if info.state == "recording" and not self._written_elsewhere(info, live_writers):
                    self._recover(info)
            except FileNotFoundError:  # deleted by its writer's node
                with self._lock:
                    self._items.pop(recording_id, None)
                continue
            except Exception as exc:
                log.warning("recordings: cannot re-read %s (%s)", recording_id, exc)
                continue
            with self._lock:
                if recording_id in self._items:
                    self._items[recording_id] = info

    def _recover(self, info: RecordingInfo) -> None:
        """The process died while writing this one: keep what plays."""
        path = self.video_path(info.recording_id)
        try:
            info.bytes = path.stat().st_size
            info.duration_s, info.frames = probe(path)
            info.state = "done" if info.frames else "failed"
            if not info.frames:
                info.error = "The process ended before any video was written."
        except Exception as exc:  # missing, or not a playable MP4 (av.FFmpegError, OSError)
            info.state, info.error = "failed", f"The process ended while recording and the file does not play ({exc})."
        info.ended_at = info.started_at + info.duration_s
        self.save(info)
        log.info("recording %s was cut by a restart: %s, %.1f s", info.recording_id, info.state, info.duration_s)

    # -- changes ----------------------------------------------------------------------
    def create(self, source: str, trigger: str, owner: Optional[str] = None, model: Optional[str] = None,
               started_at: Optional[float] = None) -> RecordingInfo:
        """A new recording in state `recording`, its sidecar written (raises OSError if it can't be)."""
        info = RecordingInfo(uuid.uuid4().hex, source, trigger, started_at or time.time(), owner=owner, model=model,
                             node=self.node_id)
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            self.save(info)
        except OSError:  # a full disk: leave no empty sidecar behind
            self._sidecar(info.recording_id).unlink(missing_ok=True)
            raise
        with self._lock:
            self._items[info.recording_id] = info
        return info

    def save(self, info: RecordingInfo) -> None:
        """Write the sidecar: to a temporary file renamed over it; on a full disk, in place (that
        frees the old copy's space first). Raises OSError if neither works."""
        data = json.dumps(asdict(info), indent=1)
        target = self._sidecar(info.recording_id)
        temporary = target.with_suffix(".json.tmp")
        try:
            temporary.write_text(data)
            os.replace(temporary, target)
        except OSError:
            temporary.unlink(missing_ok=True)
            target.write_text(data)

    def finished(self, info: RecordingInfo) -> None:
        """A recording ended (`done` or `failed`): save it; a failed save is logged, not raised."""
        try:
            self.save(info)
        except OSError as exc:
            log.error("recording %s: cannot write its sidecar (%s)", info.recording_id, exc)
        with self._lock:
            self.changes += 1

    def delete(self, recording_id: str) -> bool:
        """Remove a finished recording (file and sidecar). False if unknown; ValueError if in progress."""
        with self._lock:
            info = self._items.get(recording_id)
            if info is None:
                return False
            if info.state == "recording":
                raise ValueError("still recording")
            del self._items[recording_id]
            self.changes += 1
        for path in (self.video_path(recording_id), self._sidecar(recording_id)):
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                log.warning("recordings: cannot remove %s (%s)", path.name, exc)
        return True

    def forget(self, recording_id: str) -> None:
        """Drop this store's copy of a recording another node deleted (its files are gone)."""
        with self._lock:
            self._items.pop(recording_id, None)

    # -- reading ----------------------------------------------------------------------
    def get(self, recording_id: str) -> Optional[RecordingInfo]:
        with self._lock:
            info = self._items.get(recording_id)
            return info.copy() if info is not None else None

    def list(self, source: Optional[str] = None) -> list[RecordingInfo]:
        """Newest first."""
        with self._lock:
            items = [i.copy() for i in self._items.values() if source is None or i.source == source]
        return sorted(items, key=lambda i: i.started_at, reverse=True)

    # -- retention --------------------------------------------------------------------
    def expired(self, max_age_s: float, max_bytes: int, now: Optional[float] = None) -> list[str]:
        """Finished recordings to delete, oldest first: those that ended more than `max_age_s`
        ago, then the oldest while all recordings together (those in progress included) exceed
        `max_bytes`. A recording in progress is never one of them."""
        now = time.time() if now is None else now
        with self._lock:
            items = list(self._items.values())
        finished = sorted((i for i in items if i.state != "recording"), key=lambda i: i.started_at)
        old = [i for i in finished if now - (i.ended_at or i.started_at) > max_age_s]
        total = sum(i.bytes for i in items) - sum(i.bytes for i in old)
        out = [i.recording_id for i in old]
        for info in finished:
            if total <= max_bytes:
                break
            if info.recording_id not in out:
                out.append(info.recording_id)
                total -= info.bytes
        return out

    def total_bytes(self) -> int:
        with self._lock:
            return sum(i.bytes for i in self._items.values())
