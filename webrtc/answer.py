"""One offer answered: the peer connection is given the viewer's track (and, in camera mode, the
client's own video as its source) and gathers its answer. What it acquires is released if any
step fails, so a refused offer leaves nothing behind."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Awaitable, Callable, Optional

from aiortc import RTCPeerConnection, RTCSessionDescription

from ai_stream import AIProcessedStream
from compat.aiortc import route_keyframe_requests
from model import AIProcessor
from sources import FrameSource, SourceSpec
from sources.track import TrackSource
from webrtc.sdp import negotiated_codec

#: acquire(spec, source_factory) → the shared pipeline; release(pipeline) gives it back
Acquire = Callable[[SourceSpec, Optional[Callable[[], FrameSource]]], AIProcessor]
Release = Callable[[AIProcessor], Awaitable[None]]


@dataclass
class Answered:
    track: AIProcessedStream
    spec: SourceSpec  # for camera mode, the session's own camera source
    camera: Optional[TrackSource] = None


async def answer_offer(pc: RTCPeerConnection, sdp: str, mode: str, spec: Optional[SourceSpec], session_id: str,
                       acquire: Acquire, release: Release, camera_fps: float, shared_encode: bool) -> Answered:
    """Apply the offer to `pc`, attach the viewer's track and set the local answer.

    Audio sections are answered inactive. In shared encode mode the track sends the pipeline's
    packets for the codec the answer negotiated, and PLI/FIR reach the shared encoder."""
    await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
    for transceiver in pc.getTransceivers():
        if transceiver.kind == "audio":
            transceiver.direction = "inactive"
    camera = None
    if mode == "camera":
        # The client's own camera, processed per session (never shared) and sent back.
        remote = next(t for t in pc.getTransceivers() if t.kind == "video").receiver.track
        camera = TrackSource(remote, camera_fps)
        spec = SourceSpec(name=f"camera-{session_id[:8]}", kind="camera")
        pipeline = acquire(spec, lambda: camera)
    else:
        pipeline = acquire(spec, None)
    track = AIProcessedStream(pipeline, on_end=release)
    try:
        sender = pc.addTrack(track)
        await pc.setLocalDescription(await pc.createAnswer())  # gathers ICE candidates
        if shared_encode:
            # before the sender starts: it starts only once ICE and DTLS connect
            mid = next(t for t in pc.getTransceivers() if t.sender is sender).mid
            track.use_shared_encoder(negotiated_codec(pc.localDescription.sdp, mid))
            route_keyframe_requests(sender, track.request_keyframe)
    except BaseException:
        await track.release()
        raise
    return Answered(track=track, spec=spec, camera=camera)
