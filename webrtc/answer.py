"""One offer answered: the peer connection is given the viewer's track (and, in camera mode, the
client's own video as its source) and gathers its answer. What it acquires is released if any
step fails or the request is cancelled, so a refused offer leaves nothing behind.

Errors: aiortc refusing some detail of the offer is a `NegotiationError` (the client's fault, a
400); anything else is a bug of ours and propagates as it is (a 500, logged with its traceback).
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Awaitable, Callable, Optional

from aiortc import RTCPeerConnection, RTCSessionDescription

from ai_stream import AIProcessedStream
from compat.aiortc import route_keyframe_requests, send_prepacked
from model import AIProcessor
from sources import FrameSource, SourceSpec
from sources.track import TrackSource
from webrtc.limits import DecodeGate, guard_receivers
from webrtc.sdp import negotiated_codec

#: acquire(spec, source_factory) → the shared pipeline; release(pipeline) gives it back
Acquire = Callable[[SourceSpec, Optional[Callable[[], FrameSource]]], AIProcessor]
Release = Callable[[AIProcessor], Awaitable[None]]


class NegotiationError(ValueError):
    """aiortc could not negotiate the offer; the message is safe to show."""


@dataclass
class Answered:
    track: AIProcessedStream
    spec: SourceSpec  # for camera mode, the session's own camera source
    camera: Optional[TrackSource] = None
    gate: Optional[DecodeGate] = None  # what the client's video may make us decode


@dataclass(frozen=True)
class CameraLimits:
    max_width: int
    max_height: int
    max_fps: float


async def _negotiate(step: Awaitable):
    """Run an aiortc step that applies the client's SDP: what it raises is about that SDP."""
    try:
        return await step
    except OSError:  # the machine, not the offer (e.g. out of file descriptors): a 500
        raise
    except Exception as exc:  # whatever aiortc raises on an offer it cannot use
        raise NegotiationError(f"{type(exc).__name__}: {exc}"[:200]) from exc


async def answer_offer(pc: RTCPeerConnection, sdp: str, mode: str, spec: Optional[SourceSpec], session_id: str,
                       acquire: Acquire, release: Release, camera_fps: float, shared_encode: bool,
                       limits: CameraLimits) -> Answered:
    """Apply the offer to `pc`, attach the viewer's track and set the local answer.

    Only the first video section is used (see `webrtc.sdp.check_offer`); every other audio or
    video section is answered inactive, so a client cannot make the server receive (and decode)
    media nothing reads. In shared encode mode the track sends the pipeline's packets for the
    codec the answer negotiated, and PLI/FIR reach the shared encoder. What the client sends is
    decoded only through a `DecodeGate` (`limits`), installed before anything can arrive."""
    await _negotiate(pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer")))
    video = next(t for t in pc.getTransceivers() if t.kind == "video")
    gates = guard_receivers(pc, limits.max_width, limits.max_height, limits.max_fps)
    async with AsyncExitStack() as undo:
        camera = None
        if mode == "camera":
            # The client's own camera, processed per session (never shared) and sent back.
            camera = TrackSource(video.receiver.track, camera_fps)
            spec = SourceSpec(name=f"camera-{session_id[:8]}", kind="camera")
            pipeline = acquire(spec, lambda: camera)
        else:
            pipeline = acquire(spec, None)
        track = AIProcessedStream(pipeline, on_end=release)
        undo.push_async_callback(track.release)
        sender = pc.addTrack(track)
        for transceiver in pc.getTransceivers():
            if transceiver.kind in ("audio", "video") and transceiver.sender is not sender:
                transceiver.direction = "inactive"
        answer = await _negotiate(pc.createAnswer())
        await pc.setLocalDescription(answer)  # gathers candidates: a failure here is ours, not the client's
        if shared_encode:
            # before the sender starts: it starts only once ICE and DTLS connect
            mid = next(t for t in pc.getTransceivers() if t.sender is sender).mid
            track.use_shared_encoder(negotiated_codec(answer.sdp, mid))
            route_keyframe_requests(sender, track.picture_lost)
            send_prepacked(sender)
        undo.pop_all()  # success: the session owns the track now
    return Answered(track=track, spec=spec, camera=camera, gate=gates[0] if camera is not None else None)
