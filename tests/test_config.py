"""Settings: contract defaults, JSON env values, and one clear line for a wrong value."""

import os
import re
import socket
import subprocess
import sys

import pytest

from config import IceServer, load_settings
from conftest import ROOT, main_py_stop_line, startup_error
from webrtc.ice import rtc_configuration


def test_contract_defaults(monkeypatch):
    for name in list(os.environ):
        if name.isupper() and name in load_settings().model_fields:
            monkeypatch.delenv(name)
    s = load_settings()
    assert (s.SERVER_HOST, s.SERVER_PORT, s.DEBUG_MODE) == ("0.0.0.0", 8000, False)
    assert (s.TARGET_FPS, s.DEFAULT_WIDTH, s.DEFAULT_HEIGHT) == (30, 640, 480)
    assert s.STUN_SERVERS == [IceServer(urls="stun:stun.l.google.com:19302")]
    assert s.TURN_SERVERS == [] and s.ICE_HOST_ADDRESSES == [] and s.CORS_ORIGINS == ["*"]
    assert (s.MAX_SESSIONS, s.CONNECT_TIMEOUT, s.MAX_BODY_BYTES) == (100, 20, 65536)
    assert s.VIDEO_FILE_PATH is None and s.MEDIA_DIR.name == "media"


def test_env_json_values(monkeypatch):
    monkeypatch.setenv("STUN_SERVERS", '["stun:a.example:3478", {"urls": "stun:b.example"}]')
    monkeypatch.setenv("TURN_SERVERS", '[{"urls": "turn:t.example", "username": "u", "credential": "p"}]')
    monkeypatch.setenv("ICE_HOST_ADDRESSES", '["127.0.0.1"]')
    s = load_settings()
    assert [x.urls for x in s.STUN_SERVERS] == ["stun:a.example:3478", "stun:b.example"]
    conf = rtc_configuration(s.ice_servers)
    assert [x.urls for x in conf.iceServers] == ["stun:a.example:3478", "stun:b.example", "turn:t.example"]
    assert conf.iceServers[2].username == "u" and conf.iceServers[2].credential == "p"


def test_empty_stun_means_no_stun():
    # aiortc substitutes Google's STUN server only for None; we must hand it an empty list.
    conf = rtc_configuration(load_settings(STUN_SERVERS=[], TURN_SERVERS=[]).ice_servers)
    assert conf.iceServers == []


@pytest.mark.parametrize("name,value", [
    ("TARGET_FPS", "fast"),
    ("STUN_SERVERS", "not json"),
    ("STUN_SERVERS", '["http://example.com"]'),
    ("ICE_HOST_ADDRESSES", '["not-an-ip"]'),
    ("DEFAULT_WIDTH", "641"),
    ("MAX_SESSIONS", "0"),
    ("DEFAULT_MODEL", "yolo9000"),
])
def test_invalid_value_stops_startup_with_one_line(monkeypatch, name, value):
    assert name in startup_error(monkeypatch, **{name: value})


def test_ice_host_address_must_belong_to_this_host():
    from webrtc.ice import restrict_host_addresses

    with pytest.raises(ValueError, match="203.0.113.7"):
        restrict_host_addresses(["203.0.113.7"])
    restrict_host_addresses(["127.0.0.1"])  # what the test client uses


def test_host_addresses_are_offered_as_configured():
    import aioice.ice

    assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True) == ["127.0.0.1"]


def test_a_wrong_setting_never_echoes_credentials(monkeypatch):
    turn = '[{"urls": "http://x", "username": "u", "credential": "T0PSECRET"}]'
    message = startup_error(monkeypatch, TURN_SERVERS=turn)
    assert "TURN_SERVERS" in message and "T0PSECRET" not in message


def test_python_main_with_a_wrong_setting_exits_with_one_line_on_stderr():
    """The one real start-up: how the line reaches the user (the cases above run in-process)."""
    env = {**os.environ, "TURN_SERVERS": '[{"urls": "http://x", "username": "u", "credential": "T0PSECRET"}]'}
    proc = subprocess.run([sys.executable, "main.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "TURN_SERVERS" in lines[0], proc.stderr
    assert "T0PSECRET" not in proc.stderr + proc.stdout


def test_ice_host_address_not_of_this_host_stops_python_main_with_one_line():
    """Checked with the other settings, before uvicorn runs the lifespan (no traceback)."""
    line = main_py_stop_line("import os; os.environ['ICE_HOST_ADDRESSES'] = '[\"203.0.113.7\"]'")
    assert line == "Invalid setting ICE_HOST_ADDRESSES: 203.0.113.7 is not an address of this host"


def test_a_value_that_is_not_json_names_the_setting_and_shows_the_form(monkeypatch):
    line = main_py_stop_line("import os; os.environ['SOURCES'] = '{bad'")
    assert line.startswith("Invalid setting SOURCES: not valid JSON (Expecting property name"), line
    assert "EnvSettingsSource" not in line and '{"lobby": ' in line
    message = startup_error(monkeypatch, TURN_SERVERS='[{"urls": "turn:x", "credential": "T0PSECRET"')
    assert message.startswith("Invalid setting TURN_SERVERS: not valid JSON") and "T0PSECRET" not in message


def test_a_port_in_use_stops_python_main_with_one_line_before_the_banner():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = main_py_stop_line(f"import os; os.environ.update(SERVER_HOST='127.0.0.1', SERVER_PORT='{port}')")
    assert line == (f"Port {port} on 127.0.0.1 is in use (SERVER_PORT): stop what listens there "
                    "or choose another port")


def test_env_example_lists_every_setting():
    from config import Settings

    text = (ROOT / ".env.example").read_text(encoding="utf-8")
    listed = re.findall(r"^# ([A-Z][A-Z0-9_]+)=", text, re.MULTILINE)
    assert set(Settings.model_fields) - set(listed) == set()
    assert set(listed) - set(Settings.model_fields) == set()  # nothing that is not a setting
    assert listed[:3] == ["SOURCES", "VIDEO_FILE_PATH", "MEDIA_DIR"]  # what to watch comes first
