"""The `/api` router: SDP offer/answer and session management.

An offer is checked completely (SDP, source, model, capacity) before a peer connection is
made, so a refused offer leaves nothing behind.
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from datetime import datetime
from typing import Literal, Optional

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from api.auth import ViewerDep
from api.deps import Services, ServicesDep, SessionsDep
from api.errors import ApiError, error_responses
from api.cluster import session_meta
from api.offers import choose_model, choose_source
from cluster.connection import ClusterDown
from compat.aiortc import server_peer_connection
from webrtc.answer import CameraLimits, NegotiationError, answer_offer
from webrtc.sdp import OfferError, check_offer
from webrtc.turn import server_configuration
from webrtc.sessions import Session

log = logging.getLogger("visionguard.signaling")

MAX_HOPS = 2  # an offer handed on at most twice (a source that changed hands while it travelled)
SATURATION_WINDOW_S = 5.0  # the loop lag's median over this long decides `saturated`

router = APIRouter(prefix="/api", tags=["WebRTC signaling"])

EXAMPLE_OFFER_SDP = (
    "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    "a=group:BUNDLE 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\n"
    "a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n"
    "a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:"
    "00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n"
    "a=setup:actpass\r\na=mid:0\r\na=recvonly\r\na=rtcp-mux\r\na=rtpmap:96 VP8/90000\r\n"
)
EXAMPLE_SESSION_ID = "3f2b8c1e-6a4d-4e0f-9b7a-2d5c8e1f0a93"


# -- models -------------------------------------------------------------------
class OfferRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"sdp": EXAMPLE_OFFER_SDP, "type": "offer"},
        {"sdp": EXAMPLE_OFFER_SDP, "type": "offer", "video_path": "clip.mp4"},
    ]})

    sdp: str = Field(description="The client's SDP offer (from `RTCPeerConnection.createOffer`).")
    type: str = Field(description='Must be "offer".')
    video_path: Optional[str] = Field(
        None, description="A video file inside the server's MEDIA_DIR, relative to it (at most 1024 "
        "characters). Absolute paths, '..', URLs and symlinks leaving MEDIA_DIR are refused; the file "
        "is read as a plain video container (playlists and concat lists are refused).")
    source: Optional[str] = Field(None, description='A configured source name (e.g. "default"). '
                                  "Not together with video_path.")
    model: Optional[str] = Field(None, description="A model name from `/api/models` (default: DEFAULT_MODEL).")


class OfferResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"sdp": "v=0\r\no=- 3916571229 3916571229 IN IP4 127.0.0.1\r\n...", "type": "answer",
         "session_id": EXAMPLE_SESSION_ID}]})

    sdp: str = Field(description="The server's SDP answer.")
    type: Literal["answer"] = "answer"
    session_id: str = Field(description="Use it with /api/session/{session_id}.")


class SessionsResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"active_sessions": [EXAMPLE_SESSION_ID], "count": 1}]})

    active_sessions: list[str]
    count: int


class SessionInfo(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "session_id": EXAMPLE_SESSION_ID, "connection_state": "connected",
        "ice_connection_state": "completed", "ice_gathering_state": "complete",
        "signaling_state": "stable", "source": "default", "model": "none", "mode": "view",
        "created_at": "2026-11-25T12:00:00Z"}]})

    session_id: str
    connection_state: str
    ice_connection_state: str
    ice_gathering_state: str
    signaling_state: str
    source: str
    model: str
    mode: Literal["view", "camera"]
    created_at: datetime


class CloseResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "status": "success", "message": f"Session {EXAMPLE_SESSION_ID} closed", "active_connections": 0}]})

    status: Literal["success"] = "success"
    message: str
    active_connections: int


class SignalingHealth(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "status": "healthy", "active_connections": 2, "service": "WebRTC Signaling"}]})

    status: Literal["healthy"] = "healthy"
    active_connections: int
    service: str = "WebRTC Signaling"


OFFER_ERRORS = {
    400: "Invalid offer: bad SDP, wrong type, bad video_path, unknown model (code `bad_offer`)",
    404: "Unknown source or video file (code `not_found`)",
    409: "The requested model failed to load (code `model_unavailable`)",
    413: "Request body too large (code `body_too_large`)",
    422: "Body schema error, or the video file cannot be decoded (code `undecodable_media`)",
    401: "No valid bearer token (AUTH_MODE=jwt; code `invalid_token`)",
    403: "The token lacks the `view` scope (code `insufficient_scope`)",
    503: "Server full (MAX_SESSIONS, cluster-wide; code `server_full`), or this subject's share "
         "(MAX_SESSIONS_PER_SUBJECT; code `subject_limit`) is used up, or Redis / the source's owner node cannot "
         "be reached (code `cluster_unavailable`), or the server is saturated: its event loop's median lag over "
         "the last 5 s is above SATURATION_LAG_S (code `saturated`); see Retry-After",
    504: "The node running the source did not answer in time (code `cluster_timeout`)",
}
AUTH_ERRORS = {401: OFFER_ERRORS[401], 403: OFFER_ERRORS[403]}
UNKNOWN_SESSION = {404: "Unknown session, or another subject's without `admin` (code `not_found`)", **AUTH_ERRORS}


# -- routes ---------------------------------------------------------------------
@router.post("/offer", response_model=OfferResponse, summary="Exchange an SDP offer for an answer",
             responses=error_responses(OFFER_ERRORS))
async def offer(body: OfferRequest, services: ServicesDep, sessions: SessionsDep,
                caller: ViewerDep) -> OfferResponse:
    """Send the browser's offer, get the server's answer and a `session_id`.

    The first `m=video` section decides the mode: `recvonly` means **view** (the server sends
    the source's processed video); `sendrecv` or `sendonly` means **camera** (the server runs the
    model on the client's own video and sends the result back on the same connection; give no
    `source` or `video_path`). Every other audio or video section is answered inactive; an offer
    has at most 16 media sections and 64 ICE candidates a section. If the client opened a
    DataChannel labelled `detections` before its offer, it receives one JSON message per
    processing result on it.
    """
    if body.type != "offer":
        raise ApiError(400, f'type must be "offer", not {body.type!r}.', "bad_offer")
    try:
        mode = check_offer(body.sdp)
    except OfferError as exc:
        raise ApiError(400, str(exc), "bad_offer") from None
    if mode == "camera" and (body.source is not None or body.video_path is not None):
        raise ApiError(400, "Camera mode (the offer sends video) takes no source or video_path.", "bad_offer")
    spec = None if mode == "camera" else await choose_source(services, body.source, body.video_path)
    model, notice = await choose_model(services, body.model, spec)
    cluster = services.cluster
    session_id = sessions.new_id()
    await cluster.admit(session_id, caller.subject)  # cluster-wide MAX_SESSIONS (a no-op without Redis)
    try:
        owner = None if spec is None else await cluster.owner_for(spec.name)
        if owner is not None:  # another node runs this source: it answers (its ICE candidates)
            async with cluster.holding(session_id, caller.subject):
                answer = await cluster.ask(owner, "offer", {**body.model_dump(), "subject": caller.subject,
                                                            "session_id": session_id, "hops": 1})
            return OfferResponse(**answer)
        return await answer_here(services, body.sdp, mode, spec, model, notice, caller.subject, session_id)
    except BaseException as exc:
        # after a timeout the owner may still make the session: then it keeps the place, else the place expires
        if getattr(exc, "code", None) != "cluster_timeout":
            await cluster.forget(session_id, caller.subject)
        raise


async def answer_here(services: Services, sdp: str, mode: str, spec, model, notice: str, subject: str,
                      session_id: str) -> OfferResponse:
    """Make the peer connection for an offer on this node (the source's owner, or camera mode)."""
    sessions, hub, settings = services.sessions, services.hub, services.settings
    lag = services.loop_lag.recent_median(SATURATION_WINDOW_S)
    if settings.SATURATION_LAG_S and lag > settings.SATURATION_LAG_S:
        raise ApiError(503, f"The server is saturated (its sending loop runs {lag * 1000:.0f} ms late); a new "
                       "viewer would get a few frames a second. Try again later.", "saturated",
                       headers={"Retry-After": "5"})
    refused = sessions.reserve(subject)
    if refused == "server_full":
        raise ApiError(503, "The server is full; try again later.", "server_full", headers={"Retry-After": "5"})
    if refused == "subject_limit":
        raise ApiError(503, f"You already hold {sessions.max_per_owner} sessions (MAX_SESSIONS_PER_SUBJECT); "
                       "close one or try again later.", "subject_limit", headers={"Retry-After": "5"})
    try:
        async with AsyncExitStack() as undo:  # what the offer acquired is released on every way out
            pc = server_peer_connection(server_configuration(settings))
            sessions.track_pc(pc)
            undo.push_async_callback(sessions.discard_pc, pc)
            try:
                answered = await answer_offer(
                    pc, sdp, mode, spec, session_id,
                    acquire=lambda s, factory: hub.acquire(s, model, notice, source_factory=factory),
                    release=hub.release, camera_fps=settings.TARGET_FPS,
                    shared_encode=settings.ENCODE_MODE == "shared",
                    limits=CameraLimits(settings.CAMERA_MAX_WIDTH, settings.CAMERA_MAX_HEIGHT,
                                        settings.CAMERA_MAX_FPS))
            except (NegotiationError, OfferError) as exc:
                log.warning("offer could not be answered: %s", exc)
                raise ApiError(400, f"The offer could not be answered: {exc}", "bad_offer") from None
            undo.pop_all()  # answered: the session owns the peer connection now
    finally:
        sessions.unreserve(subject)
    if answered.camera is not None:
        answered.camera.start()
    session = Session(id=session_id, pc=pc, source=answered.spec.name, model=model.name, mode=mode,
                      owner=subject, track=answered.track, camera=answered.camera, gate=answered.gate)
    sessions.add(session)
    await services.cluster.publish_session(session)  # every node can describe it from now on

    @pc.on("datachannel")
    def _on_datachannel(channel) -> None:
        if channel.label == "detections":
            session.attach_channel(channel)

    log.info("session %s: %s mode, source %s, model %s", session.id, mode, session.source, model.name)
    return OfferResponse(sdp=pc.localDescription.sdp, type="answer", session_id=session.id)


async def _handed_offer(services: Services, payload: dict) -> dict:
    """An offer another node received for a source this node runs (or should run)."""
    body = OfferRequest(**{k: payload.get(k) for k in ("sdp", "type", "video_path", "source", "model")})
    subject, session_id, hops = payload["subject"], payload["session_id"], payload.get("hops", 1)
    # its place again: a no-op while the asker still holds it, a fresh check if the asker gave up
    await services.cluster.admit(session_id, subject)
    spec = await choose_source(services, body.source, body.video_path)
    model, notice = await choose_model(services, body.model, spec)
    owner = await services.cluster.owner_for(spec.name, hops)
    if owner is not None:  # it moved meanwhile: one more hand-off at most
        if hops >= MAX_HOPS:
            raise ApiError(503, f"Source {spec.name!r} is changing hands; try again.", "cluster_unavailable",
                           headers={"Retry-After": "1"})
        return await services.cluster.ask(owner, "offer", {**payload, "hops": hops + 1})
    answer = await answer_here(services, body.sdp, "view", spec, model, notice, subject, session_id)
    return answer.model_dump()


@router.get("/sessions", response_model=SessionsResponse, summary="List active sessions",
            responses=error_responses(AUTH_ERRORS))
async def list_sessions(services: ServicesDep, sessions: SessionsDep, caller: ViewerDep) -> SessionsResponse:
    """Your own sessions (every session with the `admin` scope, or with AUTH_MODE=off), on
    every node of the cluster (this node's alone while Redis is unreachable)."""
    everyone = caller.can("admin")
    ids = [s.id for s in sessions.visible_to(caller.subject, everyone)]
    try:
        ids += [m["session_id"] for m in await services.cluster.registry.sessions()
                if m["session_id"] not in sessions.sessions and (everyone or m["subject"] == caller.subject)]
    except ClusterDown:
        pass
    return SessionsResponse(active_sessions=ids, count=len(ids))


async def _find(services: Services, session_id: str, caller) -> tuple[Optional[Session], dict]:
    """This node's session, or another node's metadata (404 for a stranger's or an unknown one)."""
    session = services.sessions.get(session_id)
    if session is None:
        return None, await services.cluster.session_elsewhere(session_id, caller)
    if not (caller.can("admin") or session.owner == caller.subject):
        # another subject's session is as unknown as a missing one: no existence leak
        raise ApiError(404, f"Session {session_id[:64]} not found.", "not_found")
    return session, session_meta(session)


@router.get("/session/{session_id}", response_model=SessionInfo, summary="One session's state",
            responses=error_responses(UNKNOWN_SESSION))
async def get_session(session_id: str, services: ServicesDep, caller: ViewerDep) -> SessionInfo:
    """A session on any node (another node's as it last told the cluster: at most SESSION_TTL_S/3 old)."""
    _, meta = await _find(services, session_id, caller)
    return SessionInfo(**{k: meta[k] for k in SessionInfo.model_fields})


@router.delete("/session/{session_id}", response_model=CloseResponse, summary="Close a session",
               responses=error_responses({**UNKNOWN_SESSION, 503: "Redis is unreachable (code `cluster_unavailable`)",
                                          504: "The node holding it did not confirm in time (code `cluster_timeout`)"}))
async def delete_session(session_id: str, services: ServicesDep, sessions: SessionsDep,
                         caller: ViewerDep) -> CloseResponse:
    """Close a session; on another node it is closed there, and this answers once it confirmed."""
    session, meta = await _find(services, session_id, caller)
    if session is None:
        await services.cluster.ask(meta["node"], "close", {"session_id": session_id})
    elif not await sessions.close(session_id, reason="deleted"):
        raise ApiError(404, f"Session {session_id[:64]} not found.", "not_found")
    return CloseResponse(message=f"Session {session_id} closed", active_connections=len(sessions.sessions))


def cluster_handlers(services: Services) -> dict:
    """What this module answers for other nodes (api.cluster.ClusterService.serve)."""

    async def close(payload: dict) -> dict:
        if not await services.sessions.close(payload["session_id"], reason="deleted"):
            raise ApiError(404, f"Session {payload['session_id'][:64]} not found.", "not_found")
        return {}

    return {"offer": lambda payload: _handed_offer(services, payload), "close": close}


@router.get("/health", response_model=SignalingHealth, summary="Signaling health")
async def signaling_health(sessions: SessionsDep) -> SignalingHealth:
    return SignalingHealth(active_connections=len(sessions.sessions))
