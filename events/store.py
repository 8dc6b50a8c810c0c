"""`EventStore`: the newest `max_events` events in memory (ids strictly increasing), appended
to a JSON-lines file (rotated at `MAX_FILE_BYTES` to `<name>.1`, one backup) and reloaded at
start, with each event's JPEG snapshot in `<file stem>-snapshots/` beside it (in memory when
there is no file). A snapshot is deleted when its event falls out of the log.

Methods marked *blocking* touch the disk: call them off the event loop (one at a time: the
service's worker does). The others run on the loop. A folder or file that cannot be written
is logged once; from then on everything is kept in memory only.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import deque
from pathlib import Path
from typing import Any, Iterable, Optional

log = logging.getLogger("visionguard.events")

MAX_FILE_BYTES = 10 * 1024 * 1024
TYPES = ("person_seen", "person_gone")
FIELDS = ("id", "source", "type", "ts", "count", "visit_id", "snapshot_id")
_SNAPSHOT_ID = re.compile(r"^[0-9a-f]{8,32}$")


def _clean(event: dict) -> dict:
    """The contract's fields of a valid event, normalised (a bad visit or snapshot id is dropped)."""
    out = {k: event.get(k) for k in FIELDS}
    out["ts"] = float(out["ts"])
    if not isinstance(out["visit_id"], str):
        out["visit_id"] = None
    if not (isinstance(out["snapshot_id"], str) and _SNAPSHOT_ID.match(out["snapshot_id"])):
        out["snapshot_id"] = None
    return out


def checked(event: Any) -> Optional[dict]:
    """An event made by another worker (the cluster's stream) with its fields checked, or None:
    its snapshot id names a file here and the event reaches every client."""
    if not _valid(event):
        return None
    out = _clean(event)
    for key in ("recording_id", "node"):  # kept when they are what they should be
        if isinstance(event.get(key), str) and len(event[key]) <= 128:
            out[key] = event[key]
    return out


def _valid(event: Any) -> bool:
    return (isinstance(event, dict) and type(event.get("id")) is int and event["id"] > 0
            and isinstance(event.get("source"), str) and event.get("type") in TYPES
            and isinstance(event.get("ts"), (int, float)) and type(event.get("count")) is int)


class EventStore:
    def __init__(self, max_events: int, path: Optional[Path] = None, max_file_bytes: int = MAX_FILE_BYTES) -> None:
        self.max_events = max_events
        self.path = path
        self.max_file_bytes = max_file_bytes
        self.snapshot_dir = path.parent / f"{path.stem}-snapshots" if path is not None else None
        self.events: deque[dict] = deque()
        self.by_id: dict[int, dict] = {}
        self.next_id = 1
        self.dropped = 0  # events that fell out of the log (oldest first) since start
        self.memory_snapshots: dict[str, bytes] = {}  # no file, or the disk failed
        self.disk_ok = path is not None
        self.disk_error: Optional[str] = None

    # -- disk trouble: once in the log, then memory only ---------------------------------
    def _disk_failed(self, what: str, exc: OSError) -> None:
        if self.disk_ok:
            self.disk_ok = False
            self.disk_error = f"{what}: {exc.strerror or exc}"
            log.warning("events: cannot %s (%s); events and snapshots are kept in memory only from now on",
                        what, exc.strerror or exc)

    # -- start (blocking) ----------------------------------------------------------------
    def load(self) -> None:
        """Read `<file>.1` then `<file>`; keep the newest `max_events`; skip corrupt lines."""
        found = self._read_file()
        kept = sorted(found)[-self.max_events:]
        self.events = deque(found[i] for i in kept)
        self.by_id = {e["id"]: e for e in self.events}
        self._remove_orphans({e["snapshot_id"] for e in self.events if e["snapshot_id"]})
        if self.events:
            log.info("events: reloaded %d event(s) from %s (next id %d)", len(self.events), self.path.name,
                     self.next_id)

    def load_id_floor(self) -> None:
        """Only `next_id` from the file (a cluster worker: its history comes from Redis, and its
        snapshots folder may be shared with other workers on the box, so nothing is deleted)."""
        self._read_file()

    def _read_file(self) -> dict[int, dict]:
        if self.path is None:
            return {}
        found: dict[int, dict] = {}
        corrupt = 0
        for part in (self.path.with_name(self.path.name + ".1"), self.path):
            try:
                with open(part, encoding="utf-8", errors="replace") as f:
                    for line in f:
                        if not line.strip():
                            continue
                        try:
                            event = json.loads(line)
                        except ValueError:
                            event = None
                        if not _valid(event):
                            corrupt += 1
                            continue
                        found[event["id"]] = _clean(event)
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("events: cannot read %s (%s); starting without it", part.name, exc.strerror or exc)
        if corrupt:
            log.warning("events: skipped %d corrupt line(s) in %s", corrupt, self.path.name)
        if found:
            self.next_id = max(self.next_id, max(found) + 1)
        return found

    def _remove_orphans(self, referenced: set[str]) -> None:
        """Snapshots of events no longer kept (dropped while the server was down)."""
        if self.snapshot_dir is None or not self.snapshot_dir.is_dir():
            return
        for file in self.snapshot_dir.glob("*.jpg"):
            if _SNAPSHOT_ID.match(file.stem) and file.stem not in referenced:
                try:
                    file.unlink()
                except OSError:
                    pass

    # -- the event loop ------------------------------------------------------------------
    def add(self, event: dict) -> list[dict]:
        """Give `event` the next id and keep it; return the events that fell out."""
        event["id"] = self.next_id
        self.next_id += 1
        return self._keep(event)

    def insert(self, event: dict) -> Optional[list[dict]]:
        """Keep `event` with the id it has (cluster: given by Redis, read in order); return the
        events that fell out, or None when it is not newer than the newest kept (already here)."""
        if self.events and event["id"] <= self.events[-1]["id"]:
            return None
        self.next_id = max(self.next_id, event["id"] + 1)
        return self._keep(event)

    def _keep(self, event: dict) -> list[dict]:
        self.events.append(event)
        self.by_id[event["id"]] = event
        dropped = []
        while len(self.events) > self.max_events:
            old = self.events.popleft()
            del self.by_id[old["id"]]
            if old.get("snapshot_id"):
                self.memory_snapshots.pop(old["snapshot_id"], None)
            dropped.append(old)
        self.dropped += len(dropped)
        return dropped

    def get(self, event_id: int) -> Optional[dict]:
        return self.by_id.get(event_id)

    def newest_first(self, source: Optional[str] = None, since: Optional[int] = None,
                     limit: int = 100) -> list[dict]:
        out = []
        for event in reversed(self.events):
            if len(out) >= limit or (since is not None and event["id"] <= since):
                break
            if source is None or event["source"] == source:
                out.append(event)
        return out

    def after(self, last_id: int, source: Optional[str] = None) -> list[dict]:
        """Kept events newer than `last_id`, oldest first."""
        out = []
        for event in reversed(self.events):
            if event["id"] <= last_id:
                break
            if source is None or event["source"] == source:
                out.append(event)
        out.reverse()
        return out

    # -- blocking ------------------------------------------------------------------------
    def write_snapshot(self, snapshot_id: str, jpeg: bytes) -> bool:
        """Write the snapshot file; False: keep it in memory instead (no file, or the disk failed)."""
        if not self.disk_ok or self.snapshot_dir is None:
            return False
        try:
            self.snapshot_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.snapshot_dir / f".{snapshot_id}.tmp"
            tmp.write_bytes(jpeg)
            os.replace(tmp, self.snapshot_dir / f"{snapshot_id}.jpg")
            return True
        except OSError as exc:
            self._disk_failed(f"write snapshots in {self.snapshot_dir.name}/", exc)
            return False

    def read_snapshot(self, snapshot_id: str) -> Optional[bytes]:
        jpeg = self.memory_snapshots.get(snapshot_id)
        if jpeg is not None or self.snapshot_dir is None:
            return jpeg
        try:
            return (self.snapshot_dir / f"{snapshot_id}.jpg").read_bytes()
        except OSError:
            return None

    def append_line(self, event: dict, dropped: Iterable[dict] = ()) -> None:
        self.append_lines([event], dropped)

    def append_lines(self, events: list[dict], dropped: Iterable[dict] = ()) -> None:
        """Append `events` to the file, in order (rotating it when it is full); delete the
        snapshots of the events that fell out."""
        if self.snapshot_dir is not None:
            for old in dropped:
                if old.get("snapshot_id"):
                    try:
                        (self.snapshot_dir / f"{old['snapshot_id']}.jpg").unlink()
                    except OSError:
                        pass
        if not self.disk_ok or self.path is None or not events:
            return
        try:
            try:
                size = self.path.stat().st_size
            except FileNotFoundError:
                size = 0
            f = open(self.path, "a", encoding="utf-8")
            try:
                for event in events:
                    line = json.dumps({k: event.get(k) for k in FIELDS}, separators=(",", ":")) + "\n"
                    if size and size + len(line) > self.max_file_bytes:
                        f.close()
                        os.replace(self.path, self.path.with_name(self.path.name + ".1"))
                        f, size = open(self.path, "a", encoding="utf-8"), 0
                    f.write(line)
                    size += len(line.encode())
            finally:
                f.close()
        except OSError as exc:
            self._disk_failed(f"append to {self.path.name}", exc)

    def stats(self) -> dict:
        return {"kept": len(self.events), "max": self.max_events, "dropped": self.dropped,
                "next_id": self.next_id, "file": self.path.name if self.path else None,
                "disk_error": self.disk_error}
