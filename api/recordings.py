"""Recordings: start and stop (per source, per session), list, download (HTTP Range), delete.

A recording's id is opaque (32 hex digits) and checked before any file is touched; files are
never named by a client. Scopes: `admin` starts and stops a source's recording and deletes;
`view` lists and downloads, and records its own sessions. A session's recording is listed and
served to its owner and to `admin` only (it may be someone's own camera)."""

from __future__ import annotations

import asyncio
import os
import re
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Annotated, AsyncIterator, Literal, Optional

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from api.auth import AUTH_ERRORS, AdminDep, MediaViewerDep, ViewerDep
from api.deps import Services, ServicesDep
from api.errors import ApiError, error_responses, single_query_values
from api.tokens import Principal
from recording import RecordingInfo, valid_id

router = APIRouter(prefix="/api", tags=["recordings"])

CHUNK = 256 * 1024
_RANGE = re.compile(r"^bytes\s*=\s*(\d{0,18})\s*-\s*(\d{0,18})$", re.IGNORECASE)  # one range; longer: ignored
EXAMPLE_ID = "3f2c9a7e5b1d4c8e9f0a1b2c3d4e5f60"
EXAMPLE_STARTED = "2025-06-01T12:00:00.120000Z"


def _when(ts: Optional[float]) -> Optional[datetime]:
    return datetime.fromtimestamp(ts, timezone.utc) if ts is not None else None


class RecordingStarted(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "recording_id": EXAMPLE_ID, "source": "lobby", "state": "recording", "started_at": EXAMPLE_STARTED}]})

    recording_id: str
    source: str
    state: Literal["recording"] = "recording"
    started_at: datetime


class RecordingStopped(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "recording_id": EXAMPLE_ID, "duration_s": 61.4, "bytes": 7712304, "state": "done", "error": None}]})

    recording_id: str = Field(description="The last segment (a long recording rolls over every RECORDING_SEGMENT_S)")
    duration_s: float
    bytes: int
    state: Literal["done", "failed"]
    error: Optional[str] = None


class Recording(BaseModel):
    recording_id: str
    source: str
    started_at: datetime
    ended_at: Optional[datetime]
    duration_s: float = Field(description="Seconds of video (so far, while recording)")
    bytes: int
    frames: int
    state: Literal["recording", "done", "failed"]
    error: Optional[str] = Field(description="Why it failed, e.g. 'Cannot write the recording: No space left on device'")
    trigger: Literal["manual", "session", "continuous", "event"]
    dropped_frames: int = Field(0, description="Frames left out because the writer fell behind (gaps end on a keyframe)")
    download_url: str = Field(description="The MP4, ready for <video src>: signed for the caller when AUTH_MODE=jwt")


class RecordingsResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"recordings": [{
        "recording_id": EXAMPLE_ID, "source": "lobby", "started_at": EXAMPLE_STARTED,
        "ended_at": "2025-06-01T12:01:01.520000Z", "duration_s": 61.4, "bytes": 7712304, "frames": 1842,
        "state": "done", "error": None, "trigger": "manual", "dropped_frames": 0,
        "download_url": f"/api/recordings/{EXAMPLE_ID}?exp=1764417600&sub=alice&sig=Zm9v"}]}]})

    recordings: list[Recording]


class RecordingDeleted(BaseModel):
    recording_id: str
    deleted: bool = True


def _started(info: RecordingInfo) -> RecordingStarted:
    return RecordingStarted(recording_id=info.recording_id, source=info.source, started_at=_when(info.started_at))


def _stopped(info: RecordingInfo) -> RecordingStopped:
    return RecordingStopped(recording_id=info.recording_id, duration_s=info.duration_s, bytes=info.bytes,
                            state="failed" if info.state == "failed" else "done", error=info.error)


def _visible(info: RecordingInfo, caller: Principal) -> bool:
    return info.trigger != "session" or caller.can("admin") or info.owner == caller.subject


def download_url(services: Services, recording_id: str, subject: str) -> str:
    path = f"/api/recordings/{recording_id}"
    return services.signer.sign(path, subject)[0] if services.tokens is not None else path


def _source(services: Services, name: str):
    if name not in services.sources:
        raise ApiError(404, f"Unknown source {name[:64]!r}.", "not_found")
    return name


def _own_session(services: Services, session_id: str, caller: Principal):
    session = services.sessions.get(session_id)
    if session is None or not (caller.can("admin") or session.owner == caller.subject) or session.track is None:
        raise ApiError(404, f"Session {session_id[:64]} not found.", "not_found")  # no existence leak
    return session


async def _session_node(services: Services, session_id: str, caller: Principal) -> Optional[str]:
    """None for a session of this node (or an unknown one), else the node holding it."""
    if services.sessions.get(session_id) is not None or not services.cluster.shared:
        return None
    return (await services.cluster.session_elsewhere(session_id, caller))["node"]


NOT_RECORDING = "nothing is being recorded there (code `not_recording`)"


@router.post("/sources/{name}/record", status_code=201, response_model=RecordingStarted,
             summary="Start recording a source",
             responses=error_responses({**AUTH_ERRORS, 403: "The token lacks the `admin` scope",
                                        404: "Unknown source", 409: "Already recording (code `already_recording`)",
                                        503: "RECORDINGS_DIR cannot be written (code `recordings_unavailable`)"}))
async def start_source(name: str, services: ServicesDep, caller: AdminDep) -> RecordingStarted:
    """Record the source's processed video (boxes and status band, as viewers see it with the
    source's model) to a fragmented H.264 MP4, from a keyframe. The source runs while it is
    recorded, with or without viewers. Every RECORDING_SEGMENT_S the recording rolls over to a
    new file with a new `recording_id`."""
    owner = await services.cluster.owner_for(_source(services, name))
    if owner is not None:  # the node running the source records it
        return RecordingStarted(**await services.cluster.ask(owner, "record_start", {"name": name}))
    return _started(await services.recordings.start_source(name))


@router.delete("/sources/{name}/record", response_model=RecordingStopped, summary="Stop recording a source",
               responses=error_responses({**AUTH_ERRORS, 403: "The token lacks the `admin` scope",
                                          404: f"Unknown source (code `not_found`), or {NOT_RECORDING}"}))
async def stop_source(name: str, services: ServicesDep, caller: AdminDep) -> RecordingStopped:
    """Stop: the frames queued are written, the file is closed and is `done`. The answer is the
    last segment's. Stopping a source configured with `record: true` pauses it until it is
    started again or the service restarts."""
    owner = await services.cluster.current_owner(_source(services, name))
    if owner is not None and owner != services.cluster.node_id:
        return RecordingStopped(**await services.cluster.ask(owner, "record_stop", {"name": name}))
    info = await services.recordings.stop_source(name)
    if info is None:
        raise ApiError(404, f"Source {name[:64]!r} is not being recorded.", "not_recording")
    return _stopped(info)


@router.post("/record/{session_id}", status_code=201, response_model=RecordingStarted,
             summary="Start recording what a session sees",
             responses=error_responses({**AUTH_ERRORS, 404: "Unknown session, or another subject's without `admin`",
                                        409: "Already recording (code `already_recording`)",
                                        503: "RECORDINGS_DIR cannot be written (code `recordings_unavailable`)"}))
async def start_session(session_id: str, services: ServicesDep, caller: AdminDep) -> RecordingStarted:
    """Record the video this session receives (in camera mode: its own camera, processed); the
    recording ends when the session ends. Starting and stopping recordings needs `admin` (a
    recording takes disk that retention may free by deleting others' recordings). The recording
    is listed to the session's owner and to `admin`."""
    node = await _session_node(services, session_id, caller)
    if node is not None:
        return RecordingStarted(**await services.cluster.ask(node, "session_record_start", {"session_id": session_id}))
    return _started(await services.recordings.start_session(_own_session(services, session_id, caller)))


@router.delete("/record/{session_id}", response_model=RecordingStopped, summary="Stop recording a session",
               responses=error_responses({**AUTH_ERRORS,
                                          404: f"Unknown session (code `not_found`), or {NOT_RECORDING}"}))
async def stop_session(session_id: str, services: ServicesDep, caller: AdminDep) -> RecordingStopped:
    node = await _session_node(services, session_id, caller)
    if node is not None:
        return RecordingStopped(**await services.cluster.ask(node, "session_record_stop", {"session_id": session_id}))
    _own_session(services, session_id, caller)
    info = await services.recordings.stop_session(session_id)
    if info is None:
        raise ApiError(404, f"Session {session_id[:64]} is not being recorded.", "not_recording")
    return _stopped(info)


class RecordingsQuery(BaseModel):
    """Unknown query parameters are refused (422), so that a typo is not ignored."""

    model_config = ConfigDict(extra="forbid")

    source: Optional[str] = Field(None, max_length=64, description="Only this source's recordings")


@router.get("/recordings", response_model=RecordingsResponse, summary="The recordings, newest first",
            dependencies=[Depends(single_query_values)],
            responses=error_responses({**AUTH_ERRORS, 400: "A query parameter given twice (code `bad_request`)",
                                       422: "An unknown query parameter, or `source` too long"}))
async def list_recordings(services: ServicesDep, caller: ViewerDep,
                          query: Annotated[RecordingsQuery, Query()]) -> RecordingsResponse:
    """Every recording (those being written too), newest first; `?source=` keeps one source's.
    Rebuilt from the sidecars at start-up: a file a crash cut is `done` with the duration it plays."""
    found = {i.recording_id: i for i in services.recordings.store.list(query.source)}
    for reply in await services.cluster.ask_all("recordings", {"source": query.source}):
        for raw in reply["recordings"]:  # the other nodes' (one box sharing RECORDINGS_DIR: the same ones)
            if raw.get("node") == reply["node"] or raw["recording_id"] not in found:  # its writer knows best
                found[raw["recording_id"]] = RecordingInfo(**raw)
    return RecordingsResponse(recordings=[
        Recording(recording_id=i.recording_id, source=i.source, started_at=_when(i.started_at),
                  ended_at=_when(i.ended_at), duration_s=i.duration_s, bytes=i.bytes, frames=i.frames,
                  state=i.state, error=i.error, trigger=i.trigger, dropped_frames=i.dropped_frames,
                  download_url=download_url(services, i.recording_id, caller.subject))
        for i in sorted(found.values(), key=lambda i: i.started_at, reverse=True) if _visible(i, caller)])


def _found(services: Services, recording_id: str, caller: Principal) -> RecordingInfo:
    info = services.recordings.store.get(recording_id) if valid_id(recording_id) else None
    if info is None or not _visible(info, caller):
        raise ApiError(404, "No such recording.", "not_found")
    return info


@router.get("/recordings/{recording_id}", summary="Download a recording (MP4, HTTP Range)",
            response_class=StreamingResponse,
            responses={200: {"content": {"video/mp4": {}}, "description": "The whole MP4"},
                       206: {"content": {"video/mp4": {}}, "description": "The bytes asked for by `Range`"},
                       **error_responses({401: "No valid bearer token or signed URL (AUTH_MODE=jwt)",
                                          403: "The token lacks the `view` scope", 404: "No such recording",
                                          307: "Stored on another node of the cluster: `Location` is that "
                                               "node's NODE_URL (code `moved`)",
                                          416: "Range not satisfiable (`Content-Range: bytes */<size>`; "
                                               "code `range_not_satisfiable`)"})})
async def download(recording_id: str, request: Request, services: ServicesDep,
                   caller: MediaViewerDep) -> StreamingResponse:
    """The MP4 (`video/mp4`): fragmented H.264, playable while it is still being written (up to
    its last fragment). One range per request: `Range: bytes=a-b`, `a-` or `-n` → 206 with
    `Content-Range`; a start beyond the end → 416; any other `Range` is ignored (200). With
    AUTH_MODE=jwt a signed URL works too (`download_url`), so a `<video src>` can play it."""
    if services.recordings.store.get(recording_id) is None and valid_id(recording_id):
        await _elsewhere(services, recording_id, caller, request)  # another node's: here too, or redirected
    else:
        _found(services, recording_id, caller)
    path = services.recordings.store.video_path(recording_id)
    try:
        size = (await asyncio.to_thread(os.stat, path)).st_size
    except FileNotFoundError:
        raise ApiError(404, "That recording has no video (it failed before the first frame).", "not_found") from None
    start, end, status = 0, size - 1, 200
    match = _RANGE.match(request.headers.get("range", "").strip())
    if match and (match.group(1) or match.group(2)):
        first, last = match.group(1), match.group(2)
        if first:
            start, end = int(first), min(int(last), size - 1) if last else size - 1
        else:
            start, end = max(0, size - int(last)), size - 1
        if (first and last and int(last) < int(first)):
            start, end = 0, size - 1  # not a valid range: ignored
        elif start >= size or (not first and int(last) == 0):
            raise ApiError(416, f"Range not satisfiable: the recording has {size} bytes.", "range_not_satisfiable",
                           headers={"Content-Range": f"bytes */{size}", "Accept-Ranges": "bytes"})
        else:
            status = 206
    headers = {"Accept-Ranges": "bytes", "Content-Length": str(end - start + 1), "Cache-Control": "no-store"}
    if status == 206:
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    return StreamingResponse(_read(path, start, end - start + 1), status_code=status, media_type="video/mp4",
                             headers=headers)


async def _elsewhere(services: Services, recording_id: str, caller: Principal, request: Request) -> None:
    """A recording this node does not list: found on another node. On one box sharing
    RECORDINGS_DIR its file is here too (served here); else the client is sent to that node's
    NODE_URL (307, same query: a signed URL stays valid)."""
    for reply in await services.cluster.ask_all("recording", {"recording_id": recording_id}):
        info = RecordingInfo(**reply["recording"])
        if not _visible(info, caller):
            break
        if os.path.exists(services.recordings.store.video_path(recording_id)):
            return
        if reply.get("node_url"):
            query = f"?{request.url.query}" if request.url.query else ""
            raise ApiError(307, f"Recording {recording_id} is stored on node {reply['node']}.", "moved",
                           headers={"Location": f"{reply['node_url'].rstrip('/')}/api/recordings/{recording_id}{query}"})
        raise ApiError(404, f"Recording {recording_id} is stored on node {reply['node']}, which has no NODE_URL.",
                       "not_found")
    raise ApiError(404, "No such recording.", "not_found")


def cluster_handlers(services: Services) -> dict:
    """What this module answers for other nodes (api.cluster.ClusterService.serve)."""
    control = services.recordings

    async def record_start(payload: dict) -> dict:
        name = _source(services, payload["name"])
        if await services.cluster.owner_for(name, hops=1) is not None:
            raise ApiError(503, f"Source {name!r} is changing hands; try again.", "cluster_unavailable",
                           headers={"Retry-After": "1"})
        return _started(await control.start_source(name)).model_dump(mode="json")

    async def record_stop(payload: dict) -> dict:
        info = await control.stop_source(_source(services, payload["name"]))
        if info is None:
            raise ApiError(404, f"Source {payload['name'][:64]!r} is not being recorded.", "not_recording")
        return _stopped(info).model_dump(mode="json")

    async def session_start(payload: dict) -> dict:
        session = services.sessions.get(payload["session_id"])
        if session is None or session.track is None:
            raise ApiError(404, f"Session {payload['session_id'][:64]} not found.", "not_found")
        return _started(await control.start_session(session)).model_dump(mode="json")

    async def session_stop(payload: dict) -> dict:
        info = await control.stop_session(payload["session_id"])
        if info is None:
            raise ApiError(404, f"Session {payload['session_id'][:64]} is not being recorded.", "not_recording")
        return _stopped(info).model_dump(mode="json")

    async def listed(payload: dict) -> dict:
        return {"node": services.cluster.node_id,
                "recordings": [asdict(i) for i in control.store.list(payload.get("source"))]}

    async def delete(payload: dict) -> dict:
        await _delete_here(services, payload["recording_id"])
        return {}

    async def one(payload: dict) -> dict:
        info = control.store.get(payload["recording_id"]) if valid_id(payload["recording_id"]) else None
        if info is None:
            raise ApiError(404, "No such recording.", "not_found")
        return {"recording": asdict(info), "node": services.cluster.node_id, "node_url": services.settings.NODE_URL}

    return {"record_start": record_start, "record_stop": record_stop, "session_record_start": session_start,
            "session_record_stop": session_stop, "recordings": listed, "recording": one,
            "recording_delete": delete}


async def _read(path, start: int, length: int) -> AsyncIterator[bytes]:
    """The bytes [start, start + length) of the file, a chunk at a time, read off the loop."""
    file = await asyncio.to_thread(open, path, "rb")
    try:
        await asyncio.to_thread(file.seek, start)
        while length > 0:
            chunk = await asyncio.to_thread(file.read, min(CHUNK, length))
            if not chunk:
                break
            length -= len(chunk)
            yield chunk
    finally:
        file.close()


@router.delete("/recordings/{recording_id}", response_model=RecordingDeleted, summary="Delete a recording",
               responses=error_responses({**AUTH_ERRORS, 403: "The token lacks the `admin` scope",
                                          404: "No such recording",
                                          409: "It is still being recorded (code `still_recording`)"}))
async def delete_recording(recording_id: str, services: ServicesDep, caller: AdminDep) -> RecordingDeleted:
    """Remove the MP4 and its sidecar. A recording in progress is stopped first with its DELETE
    `.../record` route."""
    store, here = services.recordings.store, services.cluster.node_id
    local = store.get(recording_id) if valid_id(recording_id) else None
    if valid_id(recording_id) and (local is None or local.node not in (None, here)):  # another node's
        replies = await services.cluster.ask_all("recording", {"recording_id": recording_id})
        writers = [r for r in replies if r["recording"].get("node") == r["node"]] or replies
        if writers:  # the node that wrote it deletes it (and knows whether it is still being written)
            await services.cluster.ask(writers[0]["node"], "recording_delete", {"recording_id": recording_id})
            store.forget(recording_id)
            return RecordingDeleted(recording_id=recording_id)
    _found(services, recording_id, caller)
    await _delete_here(services, recording_id)
    return RecordingDeleted(recording_id=recording_id)


async def _delete_here(services: Services, recording_id: str) -> None:
    try:
        if not await services.recordings.delete(recording_id):
            raise ApiError(404, "No such recording.", "not_found")
    except ValueError:
        raise ApiError(409, "This recording is still being written; stop it first.", "still_recording") from None
