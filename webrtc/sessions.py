"""Session lifecycle: the peer connections this process holds, and when they end.

A session is closed and forgotten when
- its connection state becomes `failed` or `closed`;
- it has not connected within CONNECT_TIMEOUT seconds of its offer;
- it is connected but nothing has come from the peer for PEER_INACTIVITY_TIMEOUT seconds.
  aiortc has no `disconnected` state: a peer that vanishes is otherwise noticed only when
  ICE consent expires (about 30 s). Every live peer sends RTCP receiver reports about once
  a second, so a transport whose received-packet count stops moving means a gone peer.
- in camera mode, its client keeps sending frames beyond CAMERA_MAX_WIDTH/HEIGHT/FPS
  (`webrtc.limits`: frames refused for size or rate in several consecutive seconds);
- a client deletes it, or the app shuts down.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Optional

from aiortc import RTCDataChannel, RTCPeerConnection

from ai_stream import AIProcessedStream
from compat.aiortc import break_cycles
from sources.track import TrackSource
from webrtc.limits import DecodeGate, StrikeWatch

log = logging.getLogger("visionguard.sessions")

REAPER_INTERVAL_S = 1.0
#: a `detections` message is skipped while the channel holds more than this unsent
CHANNEL_BUFFER_LIMIT = 256 * 1024


@dataclass
class Session:
    id: str
    pc: RTCPeerConnection
    source: str
    model: str
    mode: str  # "view" | "camera"
    owner: str = "anonymous"  # the token's subject that created it
    created_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    track: Optional[AIProcessedStream] = None
    created_mono: float = field(default_factory=time.monotonic)
    rx_packets: int = -1
    rx_changed: float = field(default_factory=time.monotonic)
    camera: Optional[TrackSource] = None  # camera mode: the client's own video
    channel: Optional[RTCDataChannel] = None
    messages_sent: int = 0
    messages_skipped: int = 0
    gate: Optional[DecodeGate] = None  # camera mode: what the client may make us decode
    strikes: Optional[StrikeWatch] = None

    def __post_init__(self) -> None:
        if self.gate is not None:
            self.strikes = StrikeWatch(self.gate)

    def attach_channel(self, channel: RTCDataChannel) -> None:
        """Send every processing result of this session's pipeline on `channel`."""
        if self.track is None or self.channel is not None:
            return
        self.channel = channel
        self.track.pipeline.add_listener(self._send_result)
        channel.on("close", self.detach_channel)

    def detach_channel(self) -> None:
        if self.track is not None:
            self.track.pipeline.remove_listener(self._send_result)

    def forget(self) -> None:
        """After close: drop what ties the session's objects into reference cycles."""
        if self.channel is not None:
            self.channel.remove_all_listeners()
        self.channel = self.track = self.camera = self.gate = self.strikes = None

    def _send_result(self, result) -> None:
        channel = self.channel
        if channel is None or channel.readyState != "open":
            return
        if channel.bufferedAmount > CHANNEL_BUFFER_LIMIT:  # slow client: skip, never stall
            self.messages_skipped += 1
            return
        channel.send(result.message)
        self.messages_sent += 1


class SessionManager:
    def __init__(self, max_sessions: int, connect_timeout: float, inactivity_timeout: float,
                 max_per_owner: Optional[int] = None) -> None:
        self.max_sessions = max_sessions
        self.max_per_owner = max_per_owner  # MAX_SESSIONS_PER_SUBJECT when auth is on
        self.connect_timeout = connect_timeout
        self.inactivity_timeout = inactivity_timeout
        self.sessions: dict[str, Session] = {}
        #: every peer connection this process opened and has not closed yet (offers in flight too)
        self.peer_connections: set[RTCPeerConnection] = set()
        self._reserved = 0
        self._reserved_by: dict[str, int] = {}
        self._reaper: Optional[asyncio.Task] = None
        self.closed_reasons: dict[str, int] = {}
        #: camera frames refused before decoding, by reason (sessions that ended)
        self.camera_frames_dropped: dict[str, int] = {}
        #: told (on the loop) of each session's `changed` connection state and its `closed` end
        #: (the cluster registry follows them)
        self.listeners: list[Callable[[str, Session], None]] = []

    # -- capacity -----------------------------------------------------------
    def reserve(self, owner: str = "anonymous") -> Optional[str]:
        """Hold a place for an offer being answered. None when it may go ahead, else why not:
        `server_full` (MAX_SESSIONS) or `subject_limit` (this owner's share is used up)."""
        if len(self.sessions) + self._reserved >= self.max_sessions:
            return "server_full"
        if self.max_per_owner is not None:
            held = sum(s.owner == owner for s in self.sessions.values()) + self._reserved_by.get(owner, 0)
            if held >= self.max_per_owner:
                return "subject_limit"
        self._reserved += 1
        self._reserved_by[owner] = self._reserved_by.get(owner, 0) + 1
        return None

    def unreserve(self, owner: str = "anonymous") -> None:
        self._reserved -= 1
        left = self._reserved_by.get(owner, 0) - 1
        if left > 0:
            self._reserved_by[owner] = left
        else:
            self._reserved_by.pop(owner, None)

    def visible_to(self, subject: str, everyone: bool) -> list[Session]:
        """The sessions a caller may see: its own, or all of them for `admin`."""
        return [s for s in self.sessions.values() if everyone or s.owner == subject]

    @staticmethod
    def new_id() -> str:
        return str(uuid.uuid4())

    def track_pc(self, pc: RTCPeerConnection) -> None:
        self.peer_connections.add(pc)

    async def discard_pc(self, pc: RTCPeerConnection) -> None:
        self.peer_connections.discard(pc)
        try:
            await pc.close()
        except Exception:  # aiortc can trip over a half-built connection; it is gone either way
            log.debug("closing a peer connection failed", exc_info=True)
        break_cycles(pc)

    # -- registration ---------------------------------------------------------
    def add(self, session: Session) -> None:
        self.sessions[session.id] = session

        @session.pc.on("connectionstatechange")
        async def _on_state() -> None:
            state = session.pc.connectionState
            log.info("session %s: %s", session.id, state)
            if state in ("failed", "closed"):
                await self.close(session.id, reason=state)
            elif session.id in self.sessions:
                self._tell("changed", session)

    def _tell(self, what: str, session: Session) -> None:
        for listener in list(self.listeners):
            try:
                listener(what, session)
            except Exception:  # an observer never breaks a session
                log.exception("a session listener failed")

    def get(self, session_id: str) -> Optional[Session]:
        return self.sessions.get(session_id)

    async def close(self, session_id: str, reason: str = "deleted") -> bool:
        session = self.sessions.pop(session_id, None)
        if session is None:
            return False
        self.closed_reasons[reason] = self.closed_reasons.get(reason, 0) + 1
        log.info("session %s closed (%s)", session_id, reason)
        self._tell("closed", session)
        if session.gate is not None:  # what its camera sent beyond the limits, kept for /info
            for why, frames in session.gate.dropped.items():
                self.camera_frames_dropped[why] = self.camera_frames_dropped.get(why, 0) + frames
        try:
            session.detach_channel()
            if session.camera is not None:
                session.camera.stop()
            if session.track is not None:
                await session.track.release()
        finally:  # the peer connection goes, whatever happened above
            await self.discard_pc(session.pc)
            session.forget()
        return True

    async def close_all(self) -> None:
        if self._reaper:
            self._reaper.cancel()
            self._reaper = None
        await asyncio.gather(*(self.close(sid, "shutdown") for sid in list(self.sessions)))
        for pc in list(self.peer_connections):  # offers still being answered
            await self.discard_pc(pc)

    # -- reaper -----------------------------------------------------------------
    def start(self) -> None:
        self._reaper = asyncio.create_task(self._reap_forever(), name="vg-session-reaper")

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(REAPER_INTERVAL_S)
            try:
                await self.reap()
            except Exception:  # the reaper must outlive any one session's trouble
                log.exception("session reaper")

    async def reap(self) -> None:
        now = time.monotonic()
        for session in list(self.sessions.values()):
            state = session.pc.connectionState
            if state != "connected":
                if now - session.created_mono > self.connect_timeout:
                    await self.close(session.id, reason="connect-timeout")
                continue
            if session.strikes is not None and session.strikes.exceeded():
                log.warning("session %s: its camera exceeds the limits (%s)", session.id,
                            session.gate.last_violation)
                await self.close(session.id, reason="camera-limits")
                continue
            received = await _packets_received(session.pc)
            if received != session.rx_packets:
                session.rx_packets, session.rx_changed = received, now
            elif now - session.rx_changed > self.inactivity_timeout:
                await self.close(session.id, reason="peer-inactive")


async def _packets_received(pc: RTCPeerConnection) -> int:
    report = await pc.getStats()
    return sum(getattr(s, "packetsReceived", 0) or 0 for s in report.values() if s.type == "transport")
