"""The `/api` router: SDP offer/answer and session management.

An offer is checked completely (SDP, source, model, capacity) before a peer connection is
made, so a refused offer leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Literal, Optional

from aiortc import RTCPeerConnection, RTCSessionDescription
from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

from ai_stream import AIProcessedStream
from detectors import ModelEntry, ModelLoadError
from offer_check import OfferError, check_offer
from rtc import rtc_configuration
from sessions import Session
from sources import SourceError, SourceSpec
from sources.av_source import probe
from sources.media import MediaPathError, resolve_media_path
from sources.track import TrackSource

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
        None, description="A video file inside the server's MEDIA_DIR, relative to it. "
        "Absolute paths, '..', URLs and symlinks leaving MEDIA_DIR are refused.")
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


class ErrorResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"detail": "The SDP offer has no video (m=video) section."}]})

    detail: str


def _errors(*codes: int) -> dict:
    text = {
        400: "Invalid offer: bad SDP, wrong type, bad video_path, unknown model",
        404: "Unknown session, source or video file",
        409: "The requested model failed to load",
        413: "Request body too large",
        422: "Body schema error, or the video file cannot be decoded",
        503: "Server full (MAX_SESSIONS); see Retry-After",
    }
    return {c: {"model": ErrorResponse, "description": text[c]} for c in codes}


# -- helpers -------------------------------------------------------------------
def _state(request: Request):
    return request.app.state


async def _choose_source(request: Request, body: OfferRequest) -> SourceSpec:
    state = _state(request)
    if body.source is not None and body.video_path is not None:
        raise HTTPException(400, "Give either source or video_path, not both.")
    if body.source is not None:
        if not body.source:
            raise HTTPException(400, "source must not be empty.")
        spec = state.sources.get(body.source)
        if spec is None:
            raise HTTPException(404, f"Unknown source {body.source!r}.")
        return spec
    if body.video_path is not None:
        try:
            path = resolve_media_path(body.video_path, state.settings.media_dir)
        except MediaPathError as exc:
            raise HTTPException(exc.status, exc.detail) from None
        try:
            await asyncio.to_thread(probe, path)  # decoding is blocking work
        except SourceError as exc:
            raise HTTPException(422, f"{exc}.") from None
        rel = path.relative_to(state.settings.media_dir).as_posix()
        return SourceSpec(name=f"file:{rel}", kind="file", path=path)
    return state.sources["default"]


async def _choose_model(request: Request, body: OfferRequest, spec: Optional[SourceSpec]) -> tuple[ModelEntry, str]:
    """The loaded model for this offer, and the notice to draw when a configured model fell back.

    An offer's own `model` must load (else 409); the source's or the default model falls back
    to `none` with a notice on the video."""
    state = _state(request)
    registry = state.models
    if body.model is not None:
        if body.model not in registry:
            raise HTTPException(400, f"Unknown model {body.model!r}; choose one of {registry.names()}.")
        try:
            await asyncio.to_thread(registry.load, body.model)  # loading reads files: off the loop
        except ModelLoadError as exc:
            raise HTTPException(409, f"{exc}.") from None
        return registry.entries[body.model], ""
    name = (spec.model if spec else None) or state.settings.DEFAULT_MODEL
    return await asyncio.to_thread(registry.load_or_fallback, name)


def _share_encoder(pc: RTCPeerConnection, sender, track: AIProcessedStream) -> None:
    """Feed this viewer the pipeline's shared packets for the negotiated codec.

    aiortc (pinned 1.16) ignores PLI/FIR when a track hands it packets: its `_send_keyframe`
    only sets a flag that its own encoder reads. The sender's hook is pointed at the shared
    encoder instead (which rate-limits)."""
    transceiver = next(t for t in pc.getTransceivers() if t.sender is sender)
    codec = transceiver._codecs[0].mimeType.split("/")[-1].lower()  # negotiated by setRemoteDescription
    track.use_shared_encoder(codec)
    sender._send_keyframe = track.request_keyframe


# -- routes ---------------------------------------------------------------------
@router.post("/offer", response_model=OfferResponse, summary="Exchange an SDP offer for an answer",
             responses=_errors(400, 404, 409, 413, 422, 503))
async def offer(request: Request, body: OfferRequest) -> OfferResponse:
    """Send the browser's offer, get the server's answer and a `session_id`.

    The first `m=video` section decides the mode: `recvonly` means **view** (the server sends
    the source's processed video); `sendrecv` or `sendonly` means **camera** (the server runs the
    model on the client's own video and sends the result back on the same connection; give no
    `source` or `video_path`). Audio sections are answered inactive. If the client opened a
    DataChannel labelled `detections` before its offer, it receives one JSON message per
    processing result on it.
    """
    if body.type != "offer":
        raise HTTPException(400, f'type must be "offer", not {body.type!r}.')
    try:
        mode = check_offer(body.sdp)
    except OfferError as exc:
        raise HTTPException(400, str(exc)) from None
    if mode == "camera":
        if body.source is not None or body.video_path is not None:
            raise HTTPException(400, "Camera mode (the offer sends video) takes no source or video_path.")
        spec = None
    else:
        spec = await _choose_source(request, body)
    model, notice = await _choose_model(request, body, spec)

    state = _state(request)
    sessions = state.sessions
    if not sessions.reserve():
        raise HTTPException(503, "The server is full; try again later.", headers={"Retry-After": "5"})
    session_id = sessions.new_id()
    pc = RTCPeerConnection(configuration=rtc_configuration(state.settings))
    sessions.track_pc(pc)
    track: Optional[AIProcessedStream] = None
    camera: Optional[TrackSource] = None
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=body.sdp, type="offer"))
        for transceiver in pc.getTransceivers():
            if transceiver.kind == "audio":
                transceiver.direction = "inactive"
        if mode == "camera":
            # The client's own camera, processed per session (never shared) and sent back.
            remote = next(t for t in pc.getTransceivers() if t.kind == "video").receiver.track
            camera = TrackSource(remote, state.settings.TARGET_FPS)
            spec = SourceSpec(name=f"camera-{session_id[:8]}", kind="camera")
            pipeline = state.hub.acquire(spec, model, notice, source_factory=lambda: camera)
        else:
            pipeline = state.hub.acquire(spec, model, notice)
        track = AIProcessedStream(pipeline, on_end=state.hub.release)
        sender = pc.addTrack(track)
        if state.settings.ENCODE_MODE == "shared":
            _share_encoder(pc, sender, track)
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)  # gathers ICE candidates
    except Exception as exc:
        if track is not None:
            await track.release()
        await sessions.discard_pc(pc)
        sessions.unreserve()
        # The offer passed check_offer, so what is left is aiortc refusing some detail of it.
        log.warning("offer could not be answered: %r", exc)
        raise HTTPException(400, f"The offer could not be answered: {exc or type(exc).__name__}.") from None
    sessions.unreserve()
    if camera is not None:
        camera.start()
    session = Session(id=session_id, pc=pc, source=spec.name, model=model.name, mode=mode, track=track,
                      camera=camera)
    sessions.add(session)

    @pc.on("datachannel")
    def _on_datachannel(channel) -> None:
        if channel.label == "detections":
            session.attach_channel(channel)

    log.info("session %s: %s mode, source %s, model %s", session.id, mode, spec.name, model.name)
    return OfferResponse(sdp=pc.localDescription.sdp, type="answer", session_id=session.id)


@router.get("/sessions", response_model=SessionsResponse, summary="List active sessions")
async def list_sessions(request: Request) -> SessionsResponse:
    ids = list(_state(request).sessions.sessions)
    return SessionsResponse(active_sessions=ids, count=len(ids))


@router.get("/session/{session_id}", response_model=SessionInfo, summary="One session's state",
            responses=_errors(404))
async def get_session(request: Request, session_id: str) -> SessionInfo:
    session = _state(request).sessions.get(session_id)
    if session is None:
        raise HTTPException(404, f"Session {session_id} not found.")
    pc = session.pc
    return SessionInfo(
        session_id=session.id, connection_state=pc.connectionState,
        ice_connection_state=pc.iceConnectionState, ice_gathering_state=pc.iceGatheringState,
        signaling_state=pc.signalingState, source=session.source, model=session.model,
        mode=session.mode, created_at=session.created_at)


@router.delete("/session/{session_id}", response_model=CloseResponse, summary="Close a session",
               responses=_errors(404))
async def delete_session(request: Request, session_id: str) -> CloseResponse:
    sessions = _state(request).sessions
    if not await sessions.close(session_id, reason="deleted"):
        raise HTTPException(404, f"Session {session_id} not found.")
    return CloseResponse(message=f"Session {session_id} closed", active_connections=len(sessions.sessions))


@router.get("/health", response_model=SignalingHealth, summary="Signaling health")
async def signaling_health(request: Request) -> SignalingHealth:
    return SignalingHealth(active_connections=len(_state(request).sessions.sessions))
