"""SDP: an offer checked completely before any peer connection exists, and the codec an
answer negotiated.

aiortc accepts garbage ("v=0", "", free text) and answers it with an empty SDP, so the
offer is parsed and checked here first; what passes is an offer aiortc can answer.
"""

from __future__ import annotations

from aiortc.sdp import SessionDescription

SUPPORTED_VIDEO_CODECS = {"vp8", "h264"}
MAX_MEDIA_SECTIONS = 16  # a browser offers video, audio and one data channel
MAX_CANDIDATES = 64  # per section: each is an address ICE would check


class OfferError(ValueError):
    """The offer is not usable; the message is one readable sentence for the client."""


def check_offer(sdp: str) -> str:
    """Return the mode the offer asks for ("view" or "camera"), or raise OfferError."""
    if not sdp.startswith("v=0"):
        raise OfferError("The SDP offer must start with 'v=0'.")
    try:
        parsed = SessionDescription.parse(sdp)
    except Exception:  # aiortc's parser raises many types on bad input
        raise OfferError("The SDP offer could not be parsed.") from None
    if len(parsed.media) > MAX_MEDIA_SECTIONS:
        raise OfferError(f"The SDP offer has {len(parsed.media)} media sections; at most {MAX_MEDIA_SECTIONS}.")
    if any(len(m.ice_candidates) > MAX_CANDIDATES for m in parsed.media):
        raise OfferError(f"The SDP offer has more than {MAX_CANDIDATES} ICE candidates in a media section.")
    videos = [m for m in parsed.media if m.kind == "video"]
    if not videos:
        raise OfferError("The SDP offer has no video (m=video) section.")
    for media in parsed.media:
        if media.kind not in ("audio", "video", "application"):
            raise OfferError(f"The SDP offer has an unsupported m={media.kind} section.")
        if media.port == 0:
            continue  # rejected section
        if media.ice is None or not media.ice.usernameFragment or not media.ice.password:
            raise OfferError("The SDP offer lacks ICE credentials (a=ice-ufrag / a=ice-pwd).")
        if media.dtls is None or not media.dtls.fingerprints:
            raise OfferError("The SDP offer lacks a DTLS fingerprint (a=fingerprint).")
    mids = [m.rtp.muxId for m in parsed.media]
    if not all(mids) or len(set(mids)) != len(mids):
        raise OfferError("Every SDP media section needs its own a=mid.")
    for group in parsed.group:
        if group.semantic == "BUNDLE" and not set(map(str, group.items)) <= set(mids):
            raise OfferError("The SDP offer's BUNDLE group names a section that does not exist.")
    first = videos[0]
    codecs = {c.mimeType.split("/")[-1].lower() for c in first.rtp.codecs}
    if not codecs & SUPPORTED_VIDEO_CODECS:
        raise OfferError("The SDP offer's video section has no supported codec (VP8 or H264).")
    if first.direction == "recvonly":
        return "view"
    if first.direction in ("sendrecv", "sendonly", None):
        return "camera"
    raise OfferError("The SDP offer's video section is inactive.")


def negotiated_codec(answer_sdp: str, mid: str) -> str:
    """The video codec ("vp8" or "h264") the answer chose for the section `mid`.

    Read from the answer, not the offer: aiortc drops H.264 profiles it cannot send, so the
    offer's first codec is not always the one negotiated. A line scan of our own answer (its
    first payload type with a supported codec), not a full parse: it runs on every offer."""
    for section in answer_sdp.split("\r\nm=")[1:]:
        lines = section.split("\r\n")
        if not lines[0].startswith("video ") or f"a=mid:{mid}" not in lines:
            continue
        names = {}
        for line in lines:
            if line.startswith("a=rtpmap:"):
                pt, _, encoding = line[9:].partition(" ")
                names[pt] = encoding.split("/")[0].lower()
        for pt in lines[0].split()[3:]:  # "video <port> <proto> <pt> <pt> ...", in preference order
            if names.get(pt) in SUPPORTED_VIDEO_CODECS:
                return names[pt]
    raise OfferError("The answer has no usable video codec.")
