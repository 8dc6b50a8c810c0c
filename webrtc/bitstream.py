"""Frame sizes read from encoded video, before anything is decoded: the VP8 keyframe header
(RFC 6386 §9.1) and the H.264 sequence parameter set (ITU-T H.264 §7.3.2.1.1).

Used to refuse what a client must not make the server decode (`webrtc.limits`); every parser
here reads a bounded number of bytes and raises ValueError on malformed input."""

from __future__ import annotations

from typing import Iterator, Optional

VP8_START_CODE = b"\x9d\x01\x2a"
H264_IDR, H264_SPS = 5, 7
# profiles whose SPS carries chroma format, bit depths and scaling matrices
H264_HIGH_PROFILES = {100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135}
MAX_SPS_BYTES = 256


def vp8_keyframe_size(data: bytes) -> Optional[tuple[int, int]]:
    """(width, height) of a VP8 keyframe; None for an inter frame."""
    if not data:
        raise ValueError("empty VP8 frame")
    if data[0] & 1:  # P bit set: an inter frame, no size in it
        return None
    if len(data) < 10 or data[3:6] != VP8_START_CODE:
        raise ValueError("malformed VP8 keyframe header")
    width = int.from_bytes(data[6:8], "little") & 0x3FFF  # the top two bits are a scale
    height = int.from_bytes(data[8:10], "little") & 0x3FFF
    return width, height


def h264_nal_units(data: bytes) -> Iterator[bytes]:
    """The NAL units of an Annex B access unit (what aiortc's depacketiser produces)."""
    starts = []
    i = data.find(b"\x00\x00\x01")
    while i >= 0:
        starts.append(i + 3)
        i = data.find(b"\x00\x00\x01", i + 3)
    for n, start in enumerate(starts):
        end = starts[n + 1] - 3 if n + 1 < len(starts) else len(data)
        yield data[start:end].rstrip(b"\x00") if n + 1 < len(starts) else data[start:end]


def h264_access_unit(data: bytes) -> tuple[bool, Optional[tuple[int, int]]]:
    """(is an IDR picture, the largest (width, height) of the SPSs in it, or None).

    The largest, not the last: a unit may carry several SPSs, and the decoder allocates for
    whichever its slices refer to."""
    idr, size = False, None
    for nal in h264_nal_units(data):
        if not nal:
            continue
        kind = nal[0] & 0x1F
        if kind == H264_IDR:
            idr = True
        elif kind == H264_SPS:
            found = h264_sps_size(nal[1:1 + MAX_SPS_BYTES])
            size = found if size is None else (max(size[0], found[0]), max(size[1], found[1]))
    return idr, size


class _Bits:
    def __init__(self, data: bytes) -> None:
        # emulation prevention: 00 00 03 → 00 00
        self.data = data.replace(b"\x00\x00\x03", b"\x00\x00")
        self.pos = 0

    def u(self, n: int) -> int:
        value = 0
        for _ in range(n):
            byte = self.pos >> 3
            if byte >= len(self.data):
                raise ValueError("truncated H.264 SPS")
            value = (value << 1) | ((self.data[byte] >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return value

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("malformed Exp-Golomb code in H.264 SPS")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k & 1 else -(k // 2)


def h264_sps_size(rbsp: bytes) -> tuple[int, int]:
    """The coded picture (width, height) from an SPS payload (without its NAL header byte).

    Coded, not cropped: cropping only hides pixels the decoder still decodes, so a limit on
    what a client may make us decode must count them."""
    b = _Bits(rbsp)
    profile = b.u(8)
    b.u(16)  # constraint flags, level
    b.ue()  # seq_parameter_set_id
    chroma = 1
    if profile in H264_HIGH_PROFILES:
        chroma = b.ue()
        if chroma > 3:
            raise ValueError("bad chroma_format_idc in H.264 SPS")
        if chroma == 3:
            b.u(1)  # separate_colour_plane
        b.ue(), b.ue(), b.u(1)  # bit depths, qpprime_y_zero_transform_bypass
        if b.u(1):  # seq_scaling_matrix_present
            for i in range(8 if chroma != 3 else 12):
                if b.u(1):
                    _skip_scaling_list(b, 16 if i < 6 else 64)
    b.ue()  # log2_max_frame_num_minus4
    poc_type = b.ue()
    if poc_type == 0:
        b.ue()
    elif poc_type == 1:
        b.u(1), b.se(), b.se()
        for _ in range(min(b.ue(), 255)):
            b.se()
    b.ue(), b.u(1)  # max_num_ref_frames, gaps_in_frame_num_allowed
    width_mbs, height_units = b.ue() + 1, b.ue() + 1
    frame_mbs_only = b.u(1)
    if not frame_mbs_only:
        b.u(1)
    b.u(1)  # direct_8x8_inference
    return width_mbs * 16, (2 - frame_mbs_only) * height_units * 16


def _skip_scaling_list(b: _Bits, size: int) -> None:
    last = following = 8
    for _ in range(size):
        if following:
            following = (last + b.se() + 256) % 256
        last = following or last
