"""Every use of aiortc's and aioice's private internals, in one module, checked at start-up.

aiortc is pinned (`PINNED`). Each internal this project relies on is listed in `INTERNALS` with
a check; `self_check()` runs when the app is built and stops start-up with one line naming the
missing internal and the pinned version. A renamed internal must never degrade silently (a
renamed `_send_keyframe` would leave viewers frozen until the next periodic keyframe).

- `RTCRtpSender._send_keyframe`: aiortc calls it on PLI/FIR, but on the path where a track
  hands it encoded packets it only sets a flag its own (unused) encoder reads. We point it at
  the viewer's track, which asks the shared encoder (`route_keyframe_requests`).
- The codecs' `_packetize` / `_split_bitstream`: in shared encode mode each encoded frame is cut
  into RTP payloads once, on the publishing thread, with aiortc's own packetisers (`packetize`).
- `RTCRtpSender._run_rtp` / `_retransmit` and the sender's, DTLS transport's and aioice's state
  they touch: every viewer's sender sends those payloads with a lean loop of ours
  (`send_prepacked`, `compat/rtp_send.py`: one header per frame, SRTP, one `sendto` per packet)
  instead of aiortc's per-packet objects and coroutines.
- `aiortc.rate.RateCounter`: every video receiver (one per peer connection, viewers included)
  makes one with 1000 bucket objects, which lengthen every garbage-collector pass for as long
  as the session lives; `use_lean_rate_counters` puts an equivalent on two lists of ints (and
  clears a gap longer than its window at once, where aiortc's steps through every millisecond
  of it on the event loop: 190 ms after 10 minutes of silence).
- `RTCCertificate.generateCertificate`: aiortc makes a new key and self-signed certificate for
  every peer connection, and digests it again for every SDP it writes: about a third of the
  CPU of answering an offer. `share_dtls_certificate` makes one per process (renewed daily),
  its fingerprints computed once, as SFUs do, for the peer connections made by
  `server_peer_connection` (any other, e.g. a client in a test, still gets its own); the SRTP
  keys still come from each handshake's own ECDHE exchange.
- `aioice.ice.get_host_addresses`: aioice offers every interface but 127.0.0.1 and has no
  option to choose; we replace the lookup process-wide (`use_host_addresses`).
- `RemoteStreamTrack._queue`: the unbounded queue aiortc's decoder fills; camera mode drains it
  down to the newest frame (`receive_queue`).
- `RTCRtpReceiver.__decoder_queue`, `__stop_decoder`, `__decoder_error`: the unbounded queue in
  front of aiortc's decoder thread is replaced by a bounded gate, stopping the decoder no longer
  joins its thread on the event loop, and a gate that dropped frames can ask for a keyframe
  (`install_decode_gate`, `request_picture`).
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import time
import weakref
from typing import Callable, Optional

import aioice.ice
import aiortc
import aiortc.rate
import aiortc.rtcrtpreceiver
from aiortc import RTCCertificate, RTCDtlsTransport, RTCPeerConnection, RTCRtpReceiver, RTCRtpSender
from aiortc.rtcicetransport import RTCIceTransport
from aiortc.codecs.h264 import H264Encoder
from aiortc.rtcdtlstransport import RTCDtlsFingerprint
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.rtcrtpreceiver import RemoteStreamTrack

from compat import rtp_send
from compat.checks import IncompatibleLibrary, check_internals  # noqa: F401 (IncompatibleLibrary: re-exported)

PINNED = "aiortc==1.16.0"

_original_get_host_addresses = aioice.ice.get_host_addresses
_ORIGINAL_RATE_COUNTER = aiortc.rate.RateCounter
_generate_certificate = RTCCertificate.generateCertificate  # aiortc's own (bound to the class)
CERTIFICATE_RENEW_S = 24 * 3600.0  # aiortc's certificates are valid for 30 days


# -- the internals ------------------------------------------------------------------------
def route_keyframe_requests(sender: RTCRtpSender, callback: Callable[[], None]) -> None:
    """Make the sender's PLI/FIR handling call `callback` (the viewer's track: `picture_lost`)."""
    sender._send_keyframe = callback


def packetize(codec: str, data: bytes, picture_id: int) -> tuple[bytes, ...]:
    """RTP payloads of one encoded frame, as aiortc's own `pack` would cut them ("vp8": with
    this VP8 picture id, 15 bits)."""
    if codec == "vp8":
        return tuple(Vp8Encoder._packetize(data, picture_id))
    return tuple(H264Encoder._packetize(H264Encoder._split_bitstream(data)))


def send_prepacked(sender: RTCRtpSender) -> None:
    """Make `sender` (before it starts) send the payloads of what its track returns (objects with
    `payloads` and 90 kHz `pts`, see `packetize`) as they are, with `compat.rtp_send`'s loop: it
    never packetises nor creates an encoder."""
    rtp_send.send_lean(sender)


class LeanRateCounter(aiortc.rate.RateCounter):
    """aiortc's `RateCounter` (1 ms buckets over a window) with its buckets as two lists of ints
    instead of one object per bucket: the same figures, nothing for the collector to walk."""

    def reset(self) -> None:
        self._counts = [0] * self._window_size
        self._values = [0] * self._window_size
        self._origin_index = 0
        self._origin_ms = None
        self._total = aiortc.rate.RateBucket()

    def add(self, value: int, now_ms: int) -> None:
        if self._origin_ms is None:
            self._origin_ms = now_ms
        else:
            self._erase_old(now_ms)
        index = (self._origin_index + now_ms - self._origin_ms) % self._window_size
        self._counts[index] += 1
        self._values[index] += value
        self._total.count += 1
        self._total.value += value

    def _erase_old(self, now_ms: int) -> None:
        new_origin_ms = now_ms - self._window_size + 1
        if new_origin_ms - self._origin_ms >= self._window_size:  # a long gap: every bucket is old
            self.reset()  # at once, not one step per millisecond of the gap (aiortc's, on the loop)
            self._origin_ms = new_origin_ms
            return
        while self._origin_ms < new_origin_ms:
            i = self._origin_index
            self._total.count -= self._counts[i]
            self._total.value -= self._values[i]
            self._counts[i] = self._values[i] = 0
            self._origin_index = (i + 1) % self._window_size
            self._origin_ms += 1


def use_lean_rate_counters() -> None:
    """Make aiortc's receivers count their incoming bitrate with `LeanRateCounter` (process-wide)."""
    aiortc.rate.RateCounter = LeanRateCounter


class SharedCertificate(RTCCertificate):
    """The process's DTLS certificate, with its fingerprints computed once."""

    def __init__(self, made_by_aiortc: RTCCertificate) -> None:
        super().__init__(key=made_by_aiortc._key, cert=made_by_aiortc._cert)
        self.made = time.time()  # the wall clock, as the certificate's validity (a suspend counts)
        self._fingerprints = [(f.algorithm, f.value) for f in super().getFingerprints()]

    def getFingerprints(self) -> list[RTCDtlsFingerprint]:
        return [RTCDtlsFingerprint(algorithm=a, value=v) for a, v in self._fingerprints]


_shared_certificate: Optional[SharedCertificate] = None
_serving = contextvars.ContextVar("vg_server_peer_connection", default=False)


def _process_certificate(cls=None) -> RTCCertificate:
    """The shared certificate for a peer connection made by `server_peer_connection`; any other
    (a client in the same process: tests, benches) gets its own, as aiortc makes it."""
    global _shared_certificate
    if not _serving.get():
        return _generate_certificate()
    if _shared_certificate is None or time.time() - _shared_certificate.made > CERTIFICATE_RENEW_S:
        _shared_certificate = SharedCertificate(_generate_certificate())
    return _shared_certificate


def share_dtls_certificate() -> None:
    """Let `server_peer_connection` give its peer connections the process's certificate."""
    RTCCertificate.generateCertificate = classmethod(_process_certificate)


def server_peer_connection(configuration) -> RTCPeerConnection:
    """A peer connection for a viewer's session, with the process's shared DTLS certificate once
    `share_dtls_certificate` ran (else aiortc's own, made for it)."""
    token = _serving.set(True)
    try:
        return RTCPeerConnection(configuration=configuration)
    finally:
        _serving.reset(token)


def use_host_addresses(addresses: Optional[list[str]]) -> None:
    """Offer only `addresses` as ICE host candidates (None: aioice's own lookup)."""
    if addresses is None:
        aioice.ice.get_host_addresses = _original_get_host_addresses
        return
    import ipaddress

    chosen = list(addresses)

    def configured_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in chosen if (use_ipv6 if ipaddress.ip_address(a).version == 6 else use_ipv4)]

    aioice.ice.get_host_addresses = configured_addresses


def receive_queue(track) -> asyncio.Queue:
    """The queue aiortc's decoder thread fills with a remote track's decoded frames."""
    return track._queue


def install_decode_gate(receiver: RTCRtpReceiver, gate) -> None:
    """Put `gate` (with `put`, `get` and `close`) in front of the receiver's decoder thread, in
    place of aiortc's unbounded queue; call before the receiver starts (before ICE connects).

    Stopping the decoder then closes the gate (pending frames are dropped) and does not wait for
    the thread: it ends after the one frame it may be decoding, off the event loop. The hooks
    hold the receiver weakly, so they add no reference cycle."""
    receiver._RTCRtpReceiver__decoder_queue = gate
    ref = weakref.ref(receiver)

    def stop_decoder() -> None:
        owner = ref()
        if owner is not None and owner._RTCRtpReceiver__decoder_thread is not None:
            gate.close()
            owner._RTCRtpReceiver__decoder_thread = None

    receiver._RTCRtpReceiver__stop_decoder = stop_decoder


def picture_requester(receiver: RTCRtpReceiver) -> Callable[[], None]:
    """A callable that makes the receiver send a PLI with its next packet (what aiortc does
    after a decode error); it holds the receiver weakly."""
    ref = weakref.ref(receiver)

    def request() -> None:
        owner = ref()
        if owner is not None:
            owner._RTCRtpReceiver__decoder_error.set()

    return request


def break_cycles(pc) -> None:
    """After `pc.close()`: drop the event handlers that tie a closed peer connection, its
    transports and tracks into reference cycles, so its memory (and the frames its tracks
    hold) is freed when the session ends rather than at Python's next full collection."""
    emitters = {pc}
    for transceiver in pc.getTransceivers():
        for part in (transceiver.sender, transceiver.receiver):
            dtls = part.transport
            if dtls is not None:
                emitters |= {dtls, dtls.transport}
        emitters |= {t for t in (transceiver.sender.track, transceiver.receiver.track) if t is not None}
    if pc.sctp is not None:
        emitters |= {pc.sctp, pc.sctp.transport, pc.sctp.transport.transport}
    for emitter in emitters:
        remove = getattr(emitter, "remove_all_listeners", None)
        if remove is not None:
            remove()


# -- the self-check -------------------------------------------------------------------------
def _calls(function, name: str) -> bool:
    """Whether `function`'s own code refers to `name` (a call we rely on aiortc making)."""
    code = getattr(function, "__code__", None)
    return code is not None and name in code.co_names


def _sender_hook() -> bool:
    # the hook only helps if aiortc still calls it when a PLI/FIR arrives
    return (callable(getattr(RTCRtpSender, "_send_keyframe", None))
            and _calls(getattr(RTCRtpSender, "_handle_rtcp_packet", None), "_send_keyframe"))


def _packetizers() -> bool:
    return (len(packetize("vp8", b"\x00" * 3000, 1)) == 3
            and packetize("h264", b"\x00\x00\x00\x01\x67\x42" + b"\x01" * 10, 0) != ())


def _lean_send() -> bool:
    # aiortc starts the loop and answers NACKs through these names; the state our loop reads and
    # updates is made where we expect; our packets are aiortc's byte for byte
    dtls_names = set(RTCDtlsTransport.__init__.__code__.co_names)
    return (_calls(RTCRtpSender.send, "_run_rtp") and _calls(RTCRtpSender._handle_rtcp_packet, "_retransmit")
            and rtp_send.SENDER_NAMES - {"_RTCRtpSender__track"} <= set(RTCRtpSender.__init__.__code__.co_names)
            and _calls(RTCRtpSender.replaceTrack, "_RTCRtpSender__track")
            and {"_enabled", "_ssrc", "_rtx_ssrc"} <= set(RTCRtpSender.__init__.__code__.co_names)
            and {"_state", "_tx_srtp", rtp_send._DTLS_BYTES, rtp_send._DTLS_PACKETS} <= dtls_names
            # the counters we keep are the ones sender reports and stats read
            and {"_RTCRtpSender__packet_count", "_RTCRtpSender__octet_count", "_RTCRtpSender__rtp_timestamp"}
            <= set(RTCRtpSender._run_rtcp.__code__.co_names)
            and _calls(RTCDtlsTransport._get_stats, rtp_send._DTLS_BYTES)
            and _calls(RTCIceTransport.__init__, "_connection")
            and rtp_send.route_is_plain_udp() and rtp_send.same_bytes_as_aiortc())


def _rate_counter() -> bool:
    # the estimator still makes its counter through the module-level name, and ours counts alike
    original = _ORIGINAL_RATE_COUNTER
    if "RateCounter" not in aiortc.rate.RemoteBitrateEstimator.__init__.__code__.co_names:
        return False
    a, b = original(50, 8000), LeanRateCounter(50, 8000)
    for now, value in ((0, 100), (3, 200), (3, 50), (40, 1200), (70, 10), (71, 300), (200, 5), (230, 700)):
        a.add(value, now)
        b.add(value, now)
        if a.rate(now + 1) != b.rate(now + 1):
            return False
    return True


def _certificate() -> bool:
    # each peer connection still gets its certificate from this classmethod, and it is made of
    # the key and certificate the DTLS transport uses
    made = _generate_certificate()
    return (_calls(RTCPeerConnection.__init__, "generateCertificate")
            and isinstance(made, RTCCertificate) and SharedCertificate(made).getFingerprints() == made.getFingerprints())


def _host_lookup() -> bool:
    # aioice must still look the addresses up through this module-level name when gathering
    return (callable(getattr(aioice.ice, "get_host_addresses", None))
            and list(inspect.signature(_original_get_host_addresses).parameters) == ["use_ipv4", "use_ipv6"]
            and _calls(getattr(aioice.ice.Connection, "gather_candidates", None), "get_host_addresses"))


def _decoder_internals() -> bool:
    names = {"_RTCRtpReceiver__decoder_queue", "_RTCRtpReceiver__decoder_thread"}
    # the queue is made in __init__, filled per frame, and handed to the thread in receive()
    return (names <= set(RTCRtpReceiver.__init__.__code__.co_names)
            and {"_RTCRtpReceiver__decoder_queue", "_RTCRtpReceiver__decoder_error"}
            <= set(RTCRtpReceiver._handle_rtp_packet.__code__.co_names)
            and _calls(RTCRtpReceiver.receive, "_RTCRtpReceiver__decoder_queue")
            and list(inspect.signature(aiortc.rtcrtpreceiver.decoder_worker).parameters)[:2] == ["loop", "input_q"])


def _decoder_stop() -> bool:
    # every way aiortc stops the decoder goes through this one method
    return (callable(getattr(RTCRtpReceiver, "_RTCRtpReceiver__stop_decoder", None))
            and all(_calls(getattr(RTCRtpReceiver, m), "_RTCRtpReceiver__stop_decoder")
                    for m in ("stop", "_handle_disconnect", "_handle_rtcp_packet")))


def _remote_queue() -> bool:
    return isinstance(getattr(RemoteStreamTrack(kind="video"), "_queue", None), asyncio.Queue)


INTERNALS: dict[str, Callable[[], bool]] = {
    "aiortc.RTCRtpSender._send_keyframe": _sender_hook,
    "aiortc.codecs.vpx.Vp8Encoder._packetize": _packetizers,
    "aiortc.RTCRtpSender._run_rtp": _lean_send,
    "aiortc.rate.RateCounter": _rate_counter,
    "aiortc.RTCCertificate.generateCertificate": _certificate,
    "aioice.ice.get_host_addresses": _host_lookup,
    "aiortc.rtcrtpreceiver.RemoteStreamTrack._queue": _remote_queue,
    "aiortc.RTCRtpReceiver.__decoder_queue": _decoder_internals,
    "aiortc.RTCRtpReceiver.__stop_decoder": _decoder_stop,
}


def self_check() -> None:
    """Raise IncompatibleLibrary (one line) if an internal listed in INTERNALS is missing."""
    check_internals("aiortc", aiortc.__version__, PINNED, INTERNALS)
