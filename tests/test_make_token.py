"""scripts/make-token.py, run as a person runs it: a child process reading the server's settings."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import jwt
import pytest

from conftest import ROOT

SCRIPT = ROOT / "scripts" / "make-token.py"
SECRET = "make-token-test-secret-" + "0123456789abcdef" * 3  # 71 bytes: fine for HS384 too


def make_token(cwd, *args: str, **env: str) -> subprocess.CompletedProcess:
    # the settings come from env vars and .env: start from an environment without any of ours
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AUTH_", "JWT_"))}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, env={**clean, **env},
                          capture_output=True, text=True, timeout=60)


def test_prints_only_a_token_that_verifies_with_the_configured_secret(tmp_path):
    # run from another folder: the script finds the project's modules by itself
    before = int(time.time())
    done = make_token(tmp_path, "--sub", "alice", "--scope", "view metrics", "--ttl", "3600",
                      AUTH_MODE="jwt", JWT_SECRET=SECRET)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    token = done.stdout.strip()
    assert done.stdout == token + "\n" and token.count(".") == 2
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], options={"require": ["exp", "sub"]})
    assert claims["sub"] == "alice" and claims["scope"] == "view metrics"
    assert before + 3600 <= claims["exp"] <= int(time.time()) + 3600
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, SECRET + "x", algorithms=["HS256"])
    # and the server's own verifier accepts it, with those scopes
    from api.tokens import TokenVerifier

    found = TokenVerifier(["HS256"], SECRET).verify(token)
    assert found.subject == "alice" and found.scopes == {"view", "metrics"}


def test_reads_dot_env_and_adds_the_issuer_and_audience_the_server_requires(tmp_path):
    (tmp_path / ".env").write_text(f"AUTH_MODE=jwt\nJWT_SECRET={SECRET}\nJWT_ALGORITHMS=[\"HS384\"]\n"
                                   "JWT_ISSUER=https://idp.example\nJWT_AUDIENCE=visionguard\n")
    done = make_token(tmp_path, "--sub", "bob", "--scope", "admin", "--ttl", "60")
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert jwt.get_unverified_header(token)["alg"] == "HS384"
    claims = jwt.decode(token, SECRET, algorithms=["HS384"], issuer="https://idp.example", audience="visionguard")
    assert claims["sub"] == "bob" and claims["scope"] == "admin"


@pytest.mark.parametrize("env, says", [
    ({"AUTH_MODE": "off", "JWT_SECRET": SECRET}, "AUTH_MODE is 'off'"),
    ({"AUTH_MODE": "jwt"}, "JWT_SECRET must be set"),
    ({"AUTH_MODE": "jwt", "JWT_SECRET": "too-short"}, "at least 32 bytes"),
    ({"AUTH_MODE": "jwt", "JWT_ALGORITHMS": '["RS256"]', "JWT_PUBLIC_KEY_FILE": str(SCRIPT)}, "no HS algorithm"),
])
def test_refuses_in_one_line_without_an_hs_secret(tmp_path, env, says):
    done = make_token(tmp_path, "--sub", "alice", **env)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("make-token: ") and done.stderr.count("\n") == 1, done.stderr
    assert says in done.stderr
    assert "too-short" not in done.stderr  # a secret is never echoed


def test_refuses_unknown_scopes(tmp_path):
    done = make_token(tmp_path, "--sub", "alice", "--scope", "view superuser", AUTH_MODE="jwt", JWT_SECRET=SECRET)
    assert done.returncode == 2 and done.stdout == "" and "--scope" in done.stderr
