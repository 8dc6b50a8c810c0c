"""Access control with real tokens (PyJWT), a real server and a real aiortc client: every
refusal, every route open or protected, ownership, the per-subject share, signed media URLs,
RS256 and ES256 (a two-key JWKS: rotation)."""

from __future__ import annotations

import json
import time

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from starlette.routing import Mount

from api.tokens import UrlSigner, mint_token
from config import load_settings
from conftest import TEST_ENV, running_server
from rtc_client import connect
from test_api import client_offer_sdp

SECRET = "a-test-secret-that-is-long-enough-0123456789"
JWT = {"AUTH_MODE": "jwt", "JWT_SECRET": SECRET}
#: CONTRACT.md's open list (and the docs' own asset route)
OPEN = {"/", "/health", "/api/health", "/demo", "/console", "/favicon.ico", "/docs", "/redoc", "/openapi.json",
        "/docs/oauth2-redirect"}


def token(sub: str = "alice", scope: str = "view", ttl: int = 600, key=SECRET, algorithm: str = "HS256", **claims):
    return mint_token(key, sub, scope, ttl, algorithm=algorithm, **claims)


def bearer(t: str) -> dict:
    return {"Authorization": f"Bearer {t}"}


def app_with(**settings):
    import main

    return main.create_app(load_settings(**{**TEST_ENV, **settings}))


def client(app) -> httpx.AsyncClient:  # routes that need no lifespan, in-process
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://vg", timeout=30)


def assert_401(r: httpx.Response, fragment: str, secret_text: str = "") -> None:
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.json()["code"] == "invalid_token" and fragment.lower() in r.json()["detail"].lower(), r.json()
    assert len(secret_text) < 10 or secret_text not in r.text


async def test_every_refusal_says_what_is_wrong_and_never_echoes_the_token():
    now = int(time.time())
    cases = {
        "no header": ({}, "Authorization"),
        "not bearer": ({"Authorization": "Basic YWxpY2U6c2VjcmV0"}, "Authorization"),
        "empty bearer": ({"Authorization": "Bearer"}, "Authorization"),
        "garbage": (bearer("not.a.jwt"), "malformed"),
        "alg none": (bearer(jwt.encode({"sub": "alice", "scope": "view", "exp": now + 600}, None, algorithm="none")),
                     "algorithm"),
        "wrong signature": (bearer(token(key="another-secret-that-is-long-enough-012345")), "signature"),
        "expired": (bearer(token(ttl=-60)), "expired"),
        "not yet valid": (bearer(token(nbf=now + 600)), "not valid yet"),
        "no exp": (bearer(jwt.encode({"sub": "alice", "scope": "view"}, SECRET, algorithm="HS256")), "'exp'"),
        "no sub": (bearer(jwt.encode({"scope": "view", "exp": now + 600}, SECRET, algorithm="HS256")), "'sub'"),
        "HS512 not listed": (bearer(token(algorithm="HS512")), "algorithm"),
    }
    async with client(app_with(**JWT)) as http:
        for name, (headers, fragment) in cases.items():
            r = await http.get("/api/models", headers=headers)
            assert_401(r, fragment, headers.get("Authorization", "").removeprefix("Bearer "))
            if "Bearer " in headers.get("Authorization", "") and headers["Authorization"] != "Bearer":
                assert 'error="invalid_token"' in r.headers["www-authenticate"], name
        # a bearer token in the URL is never looked at
        assert_401(await http.get(f"/api/models?access_token={token()}"), "Authorization")
        # scopes: 403, with the scope named
        r = await http.get("/api/models", headers=bearer(token(scope="metrics")))
        assert r.status_code == 403 and r.json()["code"] == "insufficient_scope"
        assert 'error="insufficient_scope"' in r.headers["www-authenticate"]
        assert (await http.get("/info", headers=bearer(token(scope="view")))).status_code == 403
        assert (await http.get("/info", headers=bearer(token(scope="admin")))).status_code == 200
        assert (await http.get("/api/models", headers=bearer(token()))).status_code == 200


async def test_issuer_and_audience_are_checked_when_set():
    async with client(app_with(**JWT, JWT_ISSUER="https://idp.example", JWT_AUDIENCE="visionguard")) as http:
        good = token(iss="https://idp.example", aud="visionguard")
        assert (await http.get("/api/models", headers=bearer(good))).status_code == 200
        assert_401(await http.get("/api/models", headers=bearer(token(iss="https://evil.example", aud="visionguard"))),
                   "issuer")
        assert_401(await http.get("/api/models", headers=bearer(token(iss="https://idp.example", aud="other"))),
                   "audience")


def _route_paths(app) -> list[tuple[str, str]]:
    """Every route the app serves: the app's own, the static mount, and every route of every
    included router (documented or not)."""
    out = []
    for route in app.routes:
        if isinstance(route, Mount):
            out.append(("GET", route.path + "/demo.js"))
            continue
        prefix = ""
        if hasattr(route, "original_router"):  # FastAPI's wrapper around an included router
            prefix = route.include_context.prefix if hasattr(route, "include_context") and \
                getattr(route.include_context, "prefix", None) else ""
            routes = route.original_router.routes
        else:
            routes = [route]
        for r in routes:
            for method in sorted(getattr(r, "methods", set()) - {"HEAD", "OPTIONS"}):
                path = (prefix + r.path).replace("{session_id}", "x").replace("{name}", "default")
                out.append((method, path))
    return out


async def test_every_route_is_either_open_or_protected():
    """A new route that forgets access control fails here."""
    app = app_with(**JWT)
    routes = _route_paths(app)
    assert ("POST", "/api/offer") in routes and ("GET", "/info") in routes
    async with client(app) as http:
        for method, path in routes:
            r = await http.request(method, path, json={} if method == "POST" else None)
            if path in OPEN or path.startswith("/static/"):
                assert r.status_code != 401, (method, path)
            else:
                assert r.status_code == 401, (method, path, r.status_code)


async def test_algorithm_confusion_and_asymmetric_keys(tmp_path):
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = rsa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "rsa.pem").write_bytes(pem)
    app = app_with(AUTH_MODE="jwt", JWT_ALGORITHMS=["RS256"], JWT_PUBLIC_KEY_FILE=tmp_path / "rsa.pem")
    async with client(app) as http:
        good = jwt.encode({"sub": "alice", "scope": "view", "exp": int(time.time()) + 600}, rsa_key, algorithm="RS256")
        assert (await http.get("/api/models", headers=bearer(good))).status_code == 200
        # HS256 "signed" with the public key as the secret: the classic confusion attack
        forged = _hs256_with_key(pem, {"sub": "mallory", "scope": "admin", "exp": int(time.time()) + 600})
        assert_401(await http.get("/info", headers=bearer(forged)), "algorithm")

    # ES256 with a two-key JWKS: tokens from either key are accepted (rotation), others not
    keys = {kid: ec.generate_private_key(ec.SECP256R1()) for kid in ("old", "new")}
    jwks = {"keys": [{**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(k.public_key())), "kid": kid, "alg": "ES256",
                      "use": "sig"} for kid, k in keys.items()]}
    (tmp_path / "jwks.json").write_text(json.dumps(jwks))
    app = app_with(AUTH_MODE="jwt", JWT_ALGORITHMS=["ES256"], JWT_JWKS_FILE=tmp_path / "jwks.json")
    claims = {"sub": "alice", "scope": "view", "exp": int(time.time()) + 600}
    async with client(app) as http:
        for kid, key in keys.items():
            t = jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid})
            assert (await http.get("/api/models", headers=bearer(t))).status_code == 200, kid
        stranger = jwt.encode(claims, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256", headers={"kid": "new"})
        assert_401(await http.get("/api/models", headers=bearer(stranger)), "signature")
        unknown = jwt.encode(claims, keys["new"], algorithm="ES256", headers={"kid": "other"})
        assert_401(await http.get("/api/models", headers=bearer(unknown)), "key id")


def _hs256_with_key(key: bytes, claims: dict) -> str:
    """An HS256 token whose HMAC key is the server's public key (PyJWT refuses to make one)."""
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(json.dumps(claims).encode())
    return signing_input + "." + b64(hmac.new(key, signing_input.encode(), hashlib.sha256).digest())


async def test_sessions_belong_to_their_subject_and_admin_sees_all():
    alice, bob, admin = token("alice"), token("bob"), token("root", "admin")
    async with running_server(**JWT, MAX_SESSIONS_PER_SUBJECT=2) as (url, svc):
        viewer = await connect(url, token=alice)
        frames = await viewer.receive(15)  # the happy path: a token, an offer, video
        assert frames[-1][1].shape == (480, 640, 3)
        sid = viewer.session_id
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            assert (await http.get("/api/sessions", headers=bearer(alice))).json()["active_sessions"] == [sid]
            assert (await http.get("/api/sessions", headers=bearer(bob))).json()["active_sessions"] == []
            for method in ("GET", "DELETE"):  # another subject's session does not exist for bob
                r = await http.request(method, f"/api/session/{sid}", headers=bearer(bob))
                assert r.status_code == 404 and r.json()["code"] == "not_found"
            assert (await http.get(f"/api/session/{sid}", headers=bearer(alice))).status_code == 200
            assert (await http.get("/api/sessions", headers=bearer(admin))).json()["count"] == 1

            # the per-subject share: alice holds at most 2; bob is not affected
            second = await connect(url, token=alice)
            r = await http.post("/api/offer", json={"sdp": await client_offer_sdp(), "type": "offer"},
                                headers=bearer(alice))
            assert r.status_code == 503 and r.json()["code"] == "subject_limit" and r.headers["retry-after"]
            third = await connect(url, token=bob)
            assert svc.sessions.get(third.session_id).owner == "bob"

            assert (await http.delete(f"/api/session/{sid}", headers=bearer(admin))).status_code == 200
        for v in (viewer, second, third):
            await v.close()


async def test_signed_urls_open_one_path_for_a_short_while():
    async with running_server(**JWT, SOURCES={"lobby": "synthetic"}) as (url, svc):
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            sources = (await http.get("/api/sources", headers=bearer(token("alice")))).json()["sources"]
            signed = {s["name"]: s["snapshot_url"] for s in sources}["lobby"]
            assert "sig=" in signed and "sub=alice" in signed
            assert (await http.get("/api/sources/lobby/snapshot.jpg")).status_code == 401  # no header, no signature
            r = await http.get(signed)
            assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
            # another path with the same signature
            assert_401(await http.get(signed.replace("/lobby/", "/default/")), "signed URL")
            # one changed byte
            tampered = signed[:-1] + ("A" if signed[-1] != "A" else "B")
            assert_401(await http.get(tampered), "signed URL")
            # expired
            old, _ = svc.signer.sign("/api/sources/lobby/snapshot.jpg", "alice", now=time.time() - 3600)
            assert_401(await http.get(old), "signed URL")
            # minted on request, for a media path only
            r = await http.post("/api/signed-url", json={"path": "/api/sources/default/snapshot.jpg"},
                                headers=bearer(token("alice")))
            assert r.status_code == 200 and r.json()["expires_at"] <= time.time() + 301
            assert (await http.get(r.json()["url"])).status_code == 200
            r = await http.post("/api/signed-url", json={"path": "/info"}, headers=bearer(token("alice", "admin")))
            assert r.status_code == 400


def test_url_signer_binds_path_subject_scope_and_time():
    signer = UrlSigner(b"k" * 32, ttl_s=300)
    url, exp = signer.sign("/a.jpg", "alice")
    sig = url.rsplit("sig=", 1)[1]
    assert signer.verify("GET", "/a.jpg", str(exp), "alice", sig)
    assert not signer.verify("GET", "/b.jpg", str(exp), "alice", sig)
    assert not signer.verify("GET", "/a.jpg", str(exp), "bob", sig)
    assert not signer.verify("GET", "/a.jpg", str(exp), "alice", sig, scope="admin")
    assert not signer.verify("POST", "/a.jpg", str(exp), "alice", sig)
    assert not signer.verify("GET", "/a.jpg", str(exp + 10_000), "alice", sig)  # beyond the TTL


@pytest.mark.parametrize("settings,fragment", [
    ({"AUTH_MODE": "jwt"}, "JWT_SECRET"),
    ({"AUTH_MODE": "jwt", "JWT_SECRET": "too-short"}, "32 bytes"),
    ({"AUTH_MODE": "jwt", "JWT_ALGORITHMS": ["RS256"]}, "JWT_PUBLIC_KEY_FILE"),
    ({"AUTH_MODE": "jwt", "JWT_ALGORITHMS": ["none"], "JWT_SECRET": SECRET}, "JWT_ALGORITHMS"),
    ({"AUTH_MODE": "jwt", "JWT_ALGORITHMS": ["HS512"], "JWT_SECRET": SECRET}, "64 bytes"),
    ({"SIGNING_KEY": "short-key"}, "SIGNING_KEY"),
    ({"TURN_SECRET": "short-secret"}, "TURN_SECRET"),
])
def test_start_up_without_a_usable_key_stops_with_one_line(settings, fragment):
    from config import InvalidSettings

    with pytest.raises(InvalidSettings) as stopped:
        load_settings(**settings)
    assert fragment in stopped.value.code and "\n" not in stopped.value.code
    assert "short-" not in stopped.value.code, "a secret setting's value is never echoed"


async def test_tokens_and_signatures_never_reach_a_log(caplog, capfd):
    """Every log line, uvicorn's access log included (written by uvicorn's own handler to the
    process output): no token, no Authorization value, no signature."""
    import logging

    alice = token("alice")
    try:
        with caplog.at_level(logging.DEBUG):
            async with running_server(log_level="info", **JWT, DEBUG_MODE=True) as (url, svc):
                async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                    signed = (await http.get("/api/sources", headers=bearer(alice))).json()["sources"][0]["snapshot_url"]
                    assert (await http.get(signed)).status_code == 200
                    await http.get("/api/models", headers=bearer(alice + "x"))  # refused
                    await http.get(f"/api/models?access_token={alice}")  # a token in a URL: refused, logged
    finally:
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
            logging.getLogger(name).setLevel(logging.WARNING)  # as the other tests' servers have it
    out = capfd.readouterr()
    text = out.out + out.err + caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    assert "/snapshot.jpg?exp=" in text and "sig=***" in text, "the access log line of the signed URL is there"
    assert "access_token=***" in text
    sig = signed.rsplit("sig=", 1)[1]
    for secret in (alice, sig, SECRET):
        assert secret not in text
