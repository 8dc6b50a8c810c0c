"""`/api/events`: the person events (list, live Server-Sent Events stream, snapshots).

Shapes and behaviour: doc/API_DOCUMENTATION.md "Events". Every URL in an answer that a
browser loads by itself (`snapshot_url`, `stream_url`) is signed for the caller when
AUTH_MODE=jwt, and a plain path when access control is off.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Annotated, AsyncIterator, Callable, Literal, Optional

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from api.auth import AUTH_ERRORS, MediaViewerDep, ViewerDep
from api.deps import Services, ServicesDep
from api.errors import ApiError, error_responses, single_query_values
from compat.asgi import ABORT, CLOSING
from events import EventService

router = APIRouter(prefix="/api/events", tags=["events"])

STREAM_PATH = "/api/events/stream"
CLOSING_POLL_S = 1.0  # how often a quiet stream looks whether the server is shutting down


class Event(BaseModel):
    id: int = Field(description="Strictly increasing (continues after a restart)")
    source: str
    type: Literal["person_seen", "person_gone"]
    ts: float = Field(description="Unix seconds")
    count: int = Field(description="person_seen: persons in the triggering frame; person_gone: the visit's peak")
    visit_id: Optional[str] = Field(description="Shared by the person_seen and person_gone of one visit")
    snapshot_id: Optional[str]
    snapshot_url: Optional[str] = Field(description="The JPEG, ready for an <img> (signed for the caller "
                                        "when AUTH_MODE=jwt); null when the event has no snapshot")
    recording_id: Optional[str] = Field(None, description="With RECORD_EVENTS=true: the recording of this visit "
                                        "(`GET /api/recordings/{id}`), the same for its person_seen and person_gone")


EXAMPLE = {"id": 42, "source": "lobby", "type": "person_seen", "ts": 1764417600.123, "count": 2,
           "visit_id": "3f9c2a71be04", "snapshot_id": "9b1d4c2e7f0a5d83",
           "snapshot_url": "/api/events/42/snapshot.jpg?exp=1764417900&sub=alice&sig=Zm9v",
           "recording_id": "5f0e2b9c4d3a41e8a7b6c5d4e3f2a1b0"}


class EventsResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "events": [EXAMPLE], "stream_url": "/api/events/stream?exp=1764417900&sub=alice&sig=YmFy"}]})

    events: list[Event] = Field(description="Newest first")
    stream_url: str = Field(description="The live stream, ready for `new EventSource(...)` (signed for the "
                            "caller when AUTH_MODE=jwt; add `&last_event_id=<id>` to resume)")


def _signed(services: Services, path: str, subject: str) -> str:
    return services.signer.sign(path, subject)[0] if services.tokens is not None else path


class EventsQuery(BaseModel):
    """Unknown query parameters are refused (422), so that a typo (`?limt=5`) is not ignored."""

    model_config = ConfigDict(extra="forbid")

    source: Optional[str] = Field(None, max_length=64, description="Only this source's")
    since: Optional[int] = Field(None, ge=0, description="Only events with a larger id")
    limit: int = Field(100, ge=1, le=1000, description="At most this many (the newest)")


def public_event(services: Services, event: dict, subject: str) -> dict:
    """The stored event plus its `snapshot_url` for this caller."""
    url = _signed(services, f"/api/events/{event['id']}/snapshot.jpg", subject) if event["snapshot_id"] else None
    # `node` (the cluster worker that made it) stays inside: it is not in the contract's event shape
    return {**{k: v for k, v in event.items() if k != "node"}, "snapshot_url": url,
            "recording_id": event.get("recording_id")}


def _events(services: Services) -> EventService:
    return services.events


@router.get("", response_model=EventsResponse, summary="Recent person events", dependencies=[Depends(single_query_values)],
            responses=error_responses({**AUTH_ERRORS, 400: "A query parameter given twice (code `bad_request`)",
                                       422: "`limit` outside 1..1000, `since` not an integer, or an unknown "
                                            "query parameter"}))
async def list_events(services: ServicesDep, caller: ViewerDep, query: Annotated[EventsQuery, Query()]
                      ) -> EventsResponse:
    """The kept events (the newest `EVENTS_MAX`), newest first: `person_seen` when a person
    appears on a followed source, `person_gone` `EVENT_HOLD_S` after the last one. An unknown
    source gives an empty list. `stream_url` is the live stream for this caller."""
    found = _events(services).store.newest_first(query.source, query.since, query.limit)
    return EventsResponse(events=[public_event(services, e, caller.subject) for e in found],
                          stream_url=_signed(services, STREAM_PATH, caller.subject))


def _sse(event: dict) -> str:
    return f"id: {event['id']}\nevent: {event['type']}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n"


async def _stream(service: EventService, source: Optional[str], resume: Optional[int], extensions: dict,
                  render: Callable[[dict], dict], keepalive_s: float,
                  expires: Optional[float] = None) -> AsyncIterator[str]:
    # runs once the headers are sent: a response that never starts leaves no subscriber behind
    sub = service.subscribe(source, extensions.get(ABORT))  # before reading the backlog: no gap
    reset = resume is not None and await service.ids_began_again(resume)  # e.g. a restart without EVENTS_FILE
    if reset:
        resume = 0  # the client's id means nothing here: everything kept is new to it
    backlog = service.store.after(resume, source) if resume is not None else []
    last_id = resume or 0
    closing = extensions.get(CLOSING) or (lambda: False)
    getter: Optional[asyncio.Task] = None
    try:
        yield "retry: 3000\n\n"
        if reset:
            yield "event: reset\ndata: {}\n\n"
        for event in backlog:
            yield _sse(render(event))
            last_id = event["id"]
        quiet = 0.0
        # the credential's expiry ends the stream: EventSource comes back and is asked again
        while not sub.closed and not closing() and (expires is None or time.time() < expires):
            if getter is None:
                getter = asyncio.ensure_future(sub.queue.get())
            wait = min(CLOSING_POLL_S, keepalive_s - quiet)
            done, _ = await asyncio.wait({getter}, timeout=wait)
            if not done:
                quiet += wait
                if quiet >= keepalive_s:
                    quiet = 0.0
                    yield ": keep-alive\n\n"
                continue
            ready, getter, quiet = [getter.result()], None, 0.0
            while not sub.queue.empty():  # all that is waiting, in one go
                ready.append(sub.queue.get_nowait())
            for event in ready:
                if event["id"] > last_id:  # the backlog may have had it already
                    yield _sse(render(event))
                    last_id = event["id"]
    finally:
        if getter is not None:
            getter.cancel()
        service.unsubscribe(sub)


def _last_id(header: Optional[str], query: Optional[int]) -> Optional[int]:
    if header is None:
        return query
    try:
        value = int(header.strip())
    except ValueError:
        raise ApiError(400, "Last-Event-ID must be an event id (an integer).", "bad_request") from None
    return max(value, 0)


@router.get("/stream", summary="Live person events (Server-Sent Events)", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}},
                             "description": "`id: <id>`, `event: <type>`, `data: <the event JSON>` per event; "
                                            "`: keep-alive` every SSE_KEEPALIVE_S"},
                       **error_responses({400: "Last-Event-ID is not an integer",
                                          401: "No valid bearer token or signed URL (AUTH_MODE=jwt)",
                                          403: "The token lacks the `view` scope"})})
async def stream_events(request: Request, services: ServicesDep, caller: MediaViewerDep,
                        source: Annotated[Optional[str], Query(max_length=64)] = None,
                        last_event_id: Annotated[Optional[int], Query(ge=0, description="Resume after this id "
                                                                      "(for a fresh page; EventSource sends the "
                                                                      "Last-Event-ID header itself)")] = None,
                        last_event_id_header: Annotated[Optional[str], Header(alias="Last-Event-ID")] = None,
                        ) -> StreamingResponse:
    """New events as they happen. With `Last-Event-ID` (header or `last_event_id`), every kept
    event after that id comes first, oldest first, then the live ones: nothing lost, nothing
    twice. A client more than SSE_CLIENT_BUFFER events behind is disconnected (it resumes with
    Last-Event-ID). The stream ends when the token or signed URL it was opened with expires. Takes a bearer token or the signed `stream_url` (for `EventSource`)."""
    resume = _last_id(last_event_id_header, last_event_id)
    subject = caller.subject
    body = _stream(_events(services), source, resume, request.scope.get("extensions") or {},
                   lambda e: public_event(services, e, subject), services.settings.SSE_KEEPALIVE_S, caller.expires)
    return StreamingResponse(body, media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


@router.get("/{event_id}/snapshot.jpg", summary="An event's snapshot", response_class=Response,
            responses={200: {"content": {"image/jpeg": {}}, "description": "JPEG image"},
                       **error_responses({401: "No valid bearer token or signed URL (AUTH_MODE=jwt)",
                                          403: "The token lacks the `view` scope",
                                          404: "Unknown event, or its snapshot is gone (code `not_found`)"})})
async def event_snapshot(services: ServicesDep, event_id: int, caller: MediaViewerDep) -> Response:
    """The processed frame (boxes drawn) that the event carries, as JPEG. Takes a bearer token
    or the signed `snapshot_url`."""
    jpeg = await _events(services).snapshot(event_id)
    if jpeg is None:
        raise ApiError(404, f"No snapshot for event {event_id}.", "not_found")
    return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


def cluster_handlers(services: Services) -> dict:
    """What this module answers for other nodes: the snapshots of the events this node made (they
    stay on its disk), and how this node fetches another node's."""

    async def snapshot(payload: dict) -> dict:
        jpeg = await services.events.snapshot(int(payload["id"]))
        if jpeg is None:
            raise ApiError(404, f"No snapshot for event {payload['id']}.", "not_found")
        return {"jpeg": base64.b64encode(jpeg).decode()}

    async def fetch(event: dict) -> Optional[bytes]:
        reply = await services.cluster.ask(event["node"], "event_snapshot", {"id": event["id"]}, timeout=5.0)
        return base64.b64decode(reply["jpeg"])

    services.events.remote_snapshot = fetch
    return {"event_snapshot": snapshot}
