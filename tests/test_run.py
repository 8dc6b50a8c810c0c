"""Running the service the other documented ways: `uvicorn main:app`, and HTTPS."""

from __future__ import annotations

import datetime
import ipaddress
import os
import signal
import subprocess
import sys
import time

import httpx

from conftest import ROOT, free_port, startup_error


def wait_http(url: str, proc: subprocess.Popen, verify=True) -> httpx.Response:
    deadline = time.monotonic() + 60
    while True:
        try:
            return httpx.get(url, timeout=2, verify=verify)
        except httpx.HTTPError as exc:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"{url}: {exc!r}\n{proc.communicate(timeout=10)[0]}") from None
            time.sleep(0.2)


def base_env(port: int) -> dict:
    return {**os.environ, "SERVER_PORT": str(port), "SERVER_HOST": "127.0.0.1", "STUN_SERVERS": "[]",
            "DEFAULT_MODEL": "none", "PYTHONUNBUFFERED": "1"}


def test_uvicorn_main_app_serves():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "main:app", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=ROOT, env=base_env(port), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        r = wait_http(f"http://127.0.0.1:{port}/health", proc)
        assert r.status_code == 200 and r.json()["status"] == "healthy"
        assert httpx.get(f"http://127.0.0.1:{port}/api/sources").json()["sources"][0]["name"] == "default"
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert "Starting VisionGuard" in out


def self_signed(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def test_https_with_ssl_settings(tmp_path):
    cert, key = self_signed(tmp_path)
    port = free_port()
    env = {**base_env(port), "SSL_CERTFILE": str(cert), "SSL_KEYFILE": str(key)}
    proc = subprocess.Popen([sys.executable, "main.py"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        r = wait_http(f"https://127.0.0.1:{port}/health", proc, verify=str(cert))
        assert r.status_code == 200
        assert httpx.get(f"https://127.0.0.1:{port}/demo", verify=str(cert)).status_code == 200
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert f"https://127.0.0.1:{port}/demo" in out


def test_ssl_files_must_come_together(monkeypatch, tmp_path):
    monkeypatch.delenv("SSL_KEYFILE", raising=False)
    assert "SSL_KEYFILE" in startup_error(monkeypatch, SSL_CERTFILE=str(tmp_path / "cert.pem"))


def test_a_stop_waits_for_a_download_nobody_reads_only_shutdown_grace_s(tmp_path):
    """A `<video>` that paused stops reading its download, so the response never ends; uvicorn
    waits for open responses when it stops (by default for good). The server waits
    SHUTDOWN_GRACE_S, then closes the connection, quietly, and the process exits."""
    import socket

    from recording.store import RecordingStore

    store = RecordingStore(tmp_path)
    info = store.create("default", "manual")
    size = 256 * 1024 * 1024  # far more than the two sockets' buffers hold
    with open(store.video_path(info.recording_id), "wb") as f:
        f.truncate(size)  # sparse: no disk used
    info.state, info.bytes, info.ended_at = "done", size, time.time()
    store.save(info)
    port = free_port()
    env = {**base_env(port), "RECORDINGS_DIR": str(tmp_path), "SHUTDOWN_GRACE_S": "2"}
    proc = subprocess.Popen([sys.executable, "main.py"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc)
        with socket.create_connection(("127.0.0.1", port)) as reader:
            reader.sendall(f"GET /api/recordings/{info.recording_id} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
            assert reader.recv(4096).startswith(b"HTTP/1.1 200")  # then it reads no more
            proc.terminate()
            out, _ = proc.communicate(timeout=60)  # without the grace, it would wait for good
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode in (0, -signal.SIGTERM), out  # uvicorn ends with the signal it stopped for
    assert "1 connection(s) still open after 2 s (SHUTDOWN_GRACE_S)" in out and "Traceback" not in out, out
