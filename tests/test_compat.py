"""aiortc's internals are used in one module and checked at start-up: remove any one of them and
start-up stops with one line naming it and the pinned version."""

from __future__ import annotations

import re

import aioice.ice
import aiortc
import aiortc.rate
import aiortc.rtp
import pytest
from aiortc import RTCRtpReceiver, RTCRtpSender
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.rtcrtpreceiver import RemoteStreamTrack

import compat.aiortc as compat
from conftest import ROOT, build_test_app, main_py_stop_line


def test_the_pinned_version_is_the_one_installed_and_passes_the_check():
    pinned = re.search(r"^aiortc==(\S+)", (ROOT / "requirements.txt").read_text(), re.M).group(1)
    assert compat.PINNED == f"aiortc=={pinned}" == f"aiortc=={aiortc.__version__}"
    compat.self_check()
    build_test_app()


def _without_queue(monkeypatch):
    original = RemoteStreamTrack.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        del self._queue

    monkeypatch.setattr(RemoteStreamTrack, "__init__", init)


async def _handler_without_hook(self, packet):  # a future aiortc that no longer calls _send_keyframe
    return None


REMOVALS = {
    "aiortc.RTCRtpSender._send_keyframe": lambda mp: mp.delattr(RTCRtpSender, "_send_keyframe"),
    "aiortc.RTCRtpSender._send_keyframe (no longer called on PLI)":
        lambda mp: mp.setattr(RTCRtpSender, "_handle_rtcp_packet", _handler_without_hook),
    "aiortc.rate.RateCounter":  # the estimator makes its counter some other way
        lambda mp: mp.setattr(aiortc.rate.RemoteBitrateEstimator, "__init__", lambda self: None),
    "aiortc.RTCCertificate.generateCertificate":  # a peer connection that gets its certificate elsewhere
        lambda mp: mp.setattr(aiortc.RTCPeerConnection, "__init__", lambda self, configuration=None: None),
    "aioice.ice.get_host_addresses": lambda mp: mp.delattr(aioice.ice, "get_host_addresses"),
    "aiortc.rtcrtpreceiver.RemoteStreamTrack._queue": _without_queue,
    "aiortc.RTCRtpReceiver.__decoder_queue":  # frames reach the decoder some other way
        lambda mp: mp.setattr(RTCRtpReceiver, "_handle_rtp_packet", _handler_without_hook),
    "aiortc.codecs.vpx.Vp8Encoder._packetize": lambda mp: mp.delattr(Vp8Encoder, "_packetize"),
    "aiortc.RTCRtpSender._run_rtp":  # a sender that starts its send loop some other way
        lambda mp: mp.setattr(RTCRtpSender, "send", _handler_without_hook),
    "aiortc.RTCRtpSender._run_rtp (its state renamed)":
        lambda mp: mp.setattr(RTCRtpSender, "replaceTrack", lambda self, track: None),
    "aiortc.RTCRtpSender._run_rtp (the UDP route moved)":
        lambda mp: mp.setattr(aioice.ice.StunProtocol, "send_data", _handler_without_hook),
    "aiortc.RTCRtpSender._run_rtp (packets written differently)":
        lambda mp: mp.setattr(aiortc.rtp.RtpPacket, "serialize", lambda self, extensions_map=None: b"x"),
    "aiortc.RTCRtpReceiver.__stop_decoder": lambda mp: mp.delattr(RTCRtpReceiver, "_RTCRtpReceiver__stop_decoder"),
}


@pytest.mark.parametrize("case", list(REMOVALS))
def test_a_missing_internal_stops_start_up_with_one_line(monkeypatch, case):
    REMOVALS[case](monkeypatch)
    with pytest.raises(SystemExit) as stopped:
        build_test_app()
    message = str(stopped.value.code)
    assert len(message.splitlines()) == 1
    assert case.split(" ")[0] in message and "aiortc==1.16.0" in message


def test_every_internal_is_checked():
    assert set(compat.INTERNALS) == {case.split(" ")[0] for case in REMOVALS}


def test_python_main_prints_one_line_and_exits():
    """As an operator sees it: `python main.py` on an aiortc without the hook."""
    line = main_py_stop_line("import aiortc; del aiortc.RTCRtpSender._send_keyframe")
    assert "_send_keyframe" in line and "aiortc==1.16.0" in line


def test_no_other_module_touches_library_internals():
    """Outside compat/, product code reads no private attribute of another object (`x._name`
    where x is not self or cls) and patches no attribute of an aiortc/aioice module."""
    import ast

    offenders = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if {"tests", "bench", ".venv", "compat", "node_modules", "scripts", "examples"} & set(rel.parts):
            continue
        tree = ast.parse(path.read_text())
        library_names = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                         for alias in node.names if alias.name.split(".")[0] in ("aiortc", "aioice")}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            private = node.attr.startswith("_") and not node.attr.startswith("__")
            if private and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                offenders.append(f"{rel}:{node.lineno} reads .{node.attr}")
            if isinstance(node.ctx, ast.Store) and isinstance(root, ast.Name) and root.id in library_names:
                offenders.append(f"{rel}:{node.lineno} patches {root.id}...{node.attr}")
    assert offenders == []


def test_the_lean_rate_counter_counts_like_aiortcs_own():
    import random

    rng = random.Random(7)
    a, b = compat._ORIGINAL_RATE_COUNTER(1000, 8000), compat.LeanRateCounter(1000, 8000)
    now = 0
    for _ in range(5000):
        now += rng.choice((0, 1, 1, 2, 5, 40, 1500))
        value = rng.randrange(1, 1500)
        a.add(value, now)
        b.add(value, now)
        assert a.rate(now) == b.rate(now)
    b.reset()
    assert b.rate(now) is None and len(b._counts) == 1000


def test_the_servers_peer_connections_share_one_certificate_renewed_daily(monkeypatch):
    build_test_app()
    a, b = compat.server_peer_connection(None), compat.server_peer_connection(None)
    cert = a._RTCPeerConnection__certificates[0]
    assert b._RTCPeerConnection__certificates[0] is cert
    assert cert.getFingerprints() == compat.RTCCertificate(cert._key, cert._cert).getFingerprints()
    # any other peer connection in the process (a test client) still gets its own
    client = aiortc.RTCPeerConnection()._RTCPeerConnection__certificates[0]
    assert client is not cert and client.getFingerprints() != cert.getFingerprints()
    monkeypatch.setattr(compat, "CERTIFICATE_RENEW_S", 0.0)
    renewed = compat.server_peer_connection(None)._RTCPeerConnection__certificates[0]
    assert renewed is not cert and renewed.getFingerprints() != cert.getFingerprints()
