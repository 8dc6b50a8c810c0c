"""A lean RTP send loop for senders whose track hands out ready-cut payloads (shared encode mode).

aiortc's `RTCRtpSender._run_rtp` builds an `RtpPacket` object per payload, reads the wall clock
twice per packet through `datetime`, serialises its header extensions per packet, and sends
through four nested coroutines (DTLS → ICE transport → connection → protocol) to one `sendto`.
At 64 viewers that loop was the largest share of the event loop (doc/PERFORMANCE.md). Here, per
viewer and frame, the header (extensions included) is serialised once by aiortc's own
`RtpPacket.serialize`; each packet is that header with its sequence number and marker patched,
plus the payload, then SRTP-protected by the DTLS transport's own context and handed to the
nominated candidate pair's datagram transport, as aioice's `StunProtocol.send_data` does (a
UDP socket, or aioice's `TurnTransport` for a relayed pair; a pair of any other protocol goes
through aiortc's own `_send_rtp`). What does not change: aiortc's SRTP keys, its RTCP (sender
reports read the same counters), and NACK answers (from a history of the plain packets, RTX
wrapped by aiortc's `wrap_rtx`).

Every private name used is checked at start-up (`compat.aiortc.INTERNALS`, `self_check`).
"""

from __future__ import annotations

import asyncio
import logging
import struct
import traceback
import weakref

import aioice.ice
from aiortc import RTCDtlsTransport, RTCRtpSender, clock
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcdtlstransport import State
from aiortc.rtcrtpsender import random_sequence_number
from aiortc.rtp import RTP_HISTORY_SIZE, HeaderExtensionsMap, RtpPacket, wrap_rtx
from aiortc.utils import random32, uint16_add

logger = logging.getLogger(__name__)
_pack_seq = struct.Struct("!H").pack_into
_S = "_RTCRtpSender__"  # aiortc's name-mangled sender attributes
_DTLS_BYTES, _DTLS_PACKETS = "_RTCDtlsTransport__tx_bytes", "_RTCDtlsTransport__tx_packets"
SENDER_NAMES = {_S + n for n in ("rtp_started", "rtp_exited", "track", "encoder", "mid", "rtp_header_extensions_map",
                                 "rtx_payload_type", "rtx_sequence_number", "ntp_timestamp", "rtp_timestamp",
                                 "octet_count", "packet_count")}


def frame_header(payload_type: int, timestamp: int, ssrc: int, abs_send_time: int, mid,
                 extensions_map: HeaderExtensionsMap) -> bytes:
    """One frame's RTP header with its extensions, as aiortc writes it (sequence 0, no marker)."""
    packet = RtpPacket(payload_type=payload_type, sequence_number=0, timestamp=timestamp, ssrc=ssrc)
    packet.extensions.abs_send_time = abs_send_time
    packet.extensions.mid = mid
    return packet.serialize(extensions_map)


def packets(header: bytes, payloads, sequence_number: int) -> list[bytes]:
    """The plain RTP packets of one frame: `header` with each sequence number (and the marker on
    the last payload) patched in, followed by the payload."""
    out, last = [], len(payloads) - 1
    for i, payload in enumerate(payloads):
        buf = bytearray(header)
        if i == last:
            buf[1] |= 0x80
        _pack_seq(buf, 2, (sequence_number + i) & 0xFFFF)
        buf += payload
        out.append(bytes(buf))
    return out


def _udp_route(dtls: RTCDtlsTransport):
    """`(sendto, address)` of the nominated pair, or None if aioice sends it some other way."""
    pair = dtls.transport._connection._nominated.get(1)
    if pair is None:
        raise ConnectionError("Cannot send data, not connected")
    if type(pair.protocol) is not aioice.ice.StunProtocol:
        return None
    return pair.protocol.transport.sendto, pair.remote_addr


class _LeanSender:
    """The send loop and NACK answer of one sender (see the module docstring)."""

    def __init__(self, sender: RTCRtpSender) -> None:
        # weak: the sender holds our bound methods, and a cycle would keep a closed session's
        # sender (and its transports) alive until the collector's next full pass
        self.sender = weakref.ref(sender)
        self.history: dict[int, bytes] = {}  # seq % RTP_HISTORY_SIZE -> plain packet

    async def run_rtp(self, codec) -> None:
        s = self.sender()  # alive: it is the one starting this loop
        getattr(s, _S + "rtp_started").set()
        sequence_number, timestamp_origin = random_sequence_number(), random32()
        history = self.history
        try:
            while True:
                track = getattr(s, _S + "track")
                if not track:
                    await asyncio.sleep(0.02)
                    continue
                frame = await track.recv()
                if not s._enabled or not frame.payloads:
                    continue
                dtls = s.transport
                if dtls._state != State.CONNECTED:
                    raise ConnectionError("Cannot send encrypted RTP, not connected")
                ntp = clock.current_ntp_time()
                timestamp = (timestamp_origin + frame.pts) & 0xFFFFFFFF
                header = frame_header(codec.payloadType, timestamp, s._ssrc, (ntp >> 14) & 0x00FFFFFF,
                                      getattr(s, _S + "mid"), getattr(s, _S + "rtp_header_extensions_map"))
                plain = packets(header, frame.payloads, sequence_number)
                route = _udp_route(dtls)
                for i, packet in enumerate(plain):
                    history[(sequence_number + i) % RTP_HISTORY_SIZE] = packet  # 65536 is a multiple of the size
                if route is None:
                    for packet in plain:
                        await dtls._send_rtp(packet)
                else:
                    sendto, address = route
                    protect, sent = dtls._tx_srtp.protect, 0
                    for packet in plain:
                        data = protect(packet)
                        sendto(data, address)
                        sent += len(data)
                    setattr(dtls, _DTLS_BYTES, getattr(dtls, _DTLS_BYTES) + sent)
                    setattr(dtls, _DTLS_PACKETS, getattr(dtls, _DTLS_PACKETS) + len(plain))
                setattr(s, _S + "ntp_timestamp", ntp)
                setattr(s, _S + "rtp_timestamp", timestamp)
                setattr(s, _S + "octet_count", getattr(s, _S + "octet_count") + sum(map(len, frame.payloads)))
                setattr(s, _S + "packet_count", getattr(s, _S + "packet_count") + len(plain))
                sequence_number = (sequence_number + len(plain)) & 0xFFFF
        except (asyncio.CancelledError, ConnectionError, MediaStreamError):
            pass
        except Exception:  # like aiortc: the exit below must run, or stop() waits for ever
            logger.warning("RTP send loop failed: %s", traceback.format_exc())
        track = getattr(s, _S + "track")
        if track:
            track.stop()
            setattr(s, _S + "track", None)
        setattr(s, _S + "encoder", None)
        getattr(s, _S + "rtp_exited").set()

    async def retransmit(self, sequence_number: int) -> None:
        """Answer a NACK as aiortc does: the packet again, RTX-wrapped when RTX was negotiated."""
        s = self.sender()
        packet = self.history.get(sequence_number % RTP_HISTORY_SIZE)
        if s is None or packet is None or struct.unpack_from("!H", packet, 2)[0] != sequence_number:
            return
        rtx_payload_type = getattr(s, _S + "rtx_payload_type")
        if rtx_payload_type is not None:
            extensions_map = getattr(s, _S + "rtp_header_extensions_map")
            rtx_sequence_number = getattr(s, _S + "rtx_sequence_number")
            packet = wrap_rtx(RtpPacket.parse(packet, extensions_map), payload_type=rtx_payload_type,
                              sequence_number=rtx_sequence_number, ssrc=s._rtx_ssrc).serialize(extensions_map)
            setattr(s, _S + "rtx_sequence_number", uint16_add(rtx_sequence_number, 1))
        await s.transport._send_rtp(packet)


def send_lean(sender: RTCRtpSender) -> None:
    """Make `sender` (before it starts) send its track's `payloads`/`pts` frames with `_LeanSender`."""
    lean = _LeanSender(sender)
    sender._run_rtp = lean.run_rtp  # instance attributes: aiortc calls self._run_rtp / self._retransmit
    sender._retransmit = lean.retransmit


# -- for the self-check --------------------------------------------------------------------
def same_bytes_as_aiortc() -> bool:
    """Our packets are byte for byte the packets aiortc's loop would write (mid and abs-send-time
    negotiated, marker on the last one)."""
    from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpSendParameters
    extensions_map = HeaderExtensionsMap()
    extensions_map.configure(RTCRtpSendParameters(headerExtensions=[
        RTCRtpHeaderExtensionParameters(id=1, uri="urn:ietf:params:rtp-hdrext:sdes:mid"),
        RTCRtpHeaderExtensionParameters(id=3, uri="http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time")]))
    payloads = (b"\x90\x80" + b"a" * 40, b"\x80\x80" + b"b" * 7)
    ours = packets(frame_header(96, 123456, 0xDEADBEEF, 0x123456, "0", extensions_map), payloads, 65535)
    theirs = []
    for i, payload in enumerate(payloads):
        packet = RtpPacket(payload_type=96, sequence_number=(65535 + i) & 0xFFFF, timestamp=123456, ssrc=0xDEADBEEF)
        packet.payload, packet.marker = payload, int(i == 1)
        packet.extensions.abs_send_time, packet.extensions.mid = 0x123456, "0"
        theirs.append(packet.serialize(extensions_map))
    return ours == theirs


def route_is_plain_udp() -> bool:
    """aioice still sends a pair's data with one `sendto` on its protocol's transport (TURN too)."""
    return ("sendto" in aioice.ice.StunProtocol.send_data.__code__.co_names
            and "_nominated" in aioice.ice.Connection.sendto.__code__.co_names
            and "_nominated" in aioice.ice.Connection.__init__.__code__.co_names)

