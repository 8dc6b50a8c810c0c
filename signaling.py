"""The `/api` router: SDP offer/answer and session management.

An offer is checked completely (SDP, source, model, capacity) before a peer connection is
made, so a refused offer leaves nothing behind.
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from datetime import datetime
from typing import Literal, Optional

from aiortc import RTCPeerConnection
from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from api.auth import ViewerDep
from api.deps import HubDep, ServicesDep, SessionsDep
from api.errors import ApiError, error_responses
from api.offers import choose_model, choose_source
from webrtc.answer import CameraLimits, NegotiationError, answer_offer
from webrtc.sdp import OfferError, check_offer
from webrtc.turn import server_configuration
from webrtc.sessions import Session

log = logging.getLogger("visionguard.signaling")

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
    503: "Server full (MAX_SESSIONS; code `server_full`), or this subject's share (MAX_SESSIONS_PER_SUBJECT; "
         "code `subject_limit`) is used up; see Retry-After",
}
AUTH_ERRORS = {401: OFFER_ERRORS[401], 403: OFFER_ERRORS[403]}
UNKNOWN_SESSION = {404: "Unknown session, or another subject's without `admin` (code `not_found`)", **AUTH_ERRORS}


# -- routes ---------------------------------------------------------------------
@router.post("/offer", response_model=OfferResponse, summary="Exchange an SDP offer for an answer",
             responses=error_responses(OFFER_ERRORS))
async def offer(body: OfferRequest, services: ServicesDep, hub: HubDep, sessions: SessionsDep,
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
    if mode == "camera":
        if body.source is not None or body.video_path is not None:
            raise ApiError(400, "Camera mode (the offer sends video) takes no source or video_path.", "bad_offer")
        spec = None
    else:
        spec = await choose_source(services, body.source, body.video_path)
    model, notice = await choose_model(services, body.model, spec)

    refused = sessions.reserve(caller.subject)
    if refused == "server_full":
        raise ApiError(503, "The server is full; try again later.", "server_full", headers={"Retry-After": "5"})
    if refused == "subject_limit":
        raise ApiError(503, f"You already hold {sessions.max_per_owner} sessions (MAX_SESSIONS_PER_SUBJECT); "
                       "close one or try again later.", "subject_limit", headers={"Retry-After": "5"})
    settings = services.settings
    session_id = sessions.new_id()
    try:
        async with AsyncExitStack() as undo:  # what the offer acquired is released on every way out
            pc = RTCPeerConnection(configuration=server_configuration(settings))
            sessions.track_pc(pc)
            undo.push_async_callback(sessions.discard_pc, pc)
            try:
                answered = await answer_offer(
                    pc, body.sdp, mode, spec, session_id,
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
        sessions.unreserve(caller.subject)
    if answered.camera is not None:
        answered.camera.start()
    session = Session(id=session_id, pc=pc, source=answered.spec.name, model=model.name, mode=mode,
                      owner=caller.subject, track=answered.track, camera=answered.camera, gate=answered.gate)
    sessions.add(session)

    @pc.on("datachannel")
    def _on_datachannel(channel) -> None:
        if channel.label == "detections":
            session.attach_channel(channel)

    log.info("session %s: %s mode, source %s, model %s", session.id, mode, session.source, model.name)
    return OfferResponse(sdp=pc.localDescription.sdp, type="answer", session_id=session.id)


@router.get("/sessions", response_model=SessionsResponse, summary="List active sessions",
            responses=error_responses(AUTH_ERRORS))
async def list_sessions(sessions: SessionsDep, caller: ViewerDep) -> SessionsResponse:
    """Your own sessions (every session with the `admin` scope, or with AUTH_MODE=off)."""
    ids = [s.id for s in sessions.visible_to(caller.subject, caller.can("admin"))]
    return SessionsResponse(active_sessions=ids, count=len(ids))


def _own_session(sessions, session_id: str, caller) -> Session:
    session = sessions.get(session_id)
    if session is None or not (caller.can("admin") or session.owner == caller.subject):
        # another subject's session is as unknown as a missing one: no existence leak
        raise ApiError(404, f"Session {session_id[:64]} not found.", "not_found")
    return session


@router.get("/session/{session_id}", response_model=SessionInfo, summary="One session's state",
            responses=error_responses(UNKNOWN_SESSION))
async def get_session(session_id: str, sessions: SessionsDep, caller: ViewerDep) -> SessionInfo:
    session = _own_session(sessions, session_id, caller)
    pc = session.pc
    return SessionInfo(
        session_id=session.id, connection_state=pc.connectionState,
        ice_connection_state=pc.iceConnectionState, ice_gathering_state=pc.iceGatheringState,
        signaling_state=pc.signalingState, source=session.source, model=session.model,
        mode=session.mode, created_at=session.created_at)


@router.delete("/session/{session_id}", response_model=CloseResponse, summary="Close a session",
               responses=error_responses(UNKNOWN_SESSION))
async def delete_session(session_id: str, sessions: SessionsDep, caller: ViewerDep) -> CloseResponse:
    _own_session(sessions, session_id, caller)
    if not await sessions.close(session_id, reason="deleted"):
        raise ApiError(404, f"Session {session_id[:64]} not found.", "not_found")
    return CloseResponse(message=f"Session {session_id} closed", active_connections=len(sessions.sessions))


@router.get("/health", response_model=SignalingHealth, summary="Signaling health")
async def signaling_health(sessions: SessionsDep) -> SignalingHealth:
    return SignalingHealth(active_connections=len(sessions.sessions))
