"""The security primitives behind access control: bearer tokens checked with PyJWT
(`TokenVerifier`) and signed media URLs (`UrlSigner`). No FastAPI here: `api.auth` turns them
into route dependencies.

A token is accepted only with an algorithm from JWT_ALGORITHMS (never `none`; an HS256 token
against an RS256 key is refused, not verified with the public key as a secret), a valid
signature, `exp` and `sub`, and `iss`/`aud` when those settings are set; clock skew up to
JWT_LEEWAY_S. Scopes come from the space-separated `scope` claim.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import quote

import jwt
from cryptography.hazmat.primitives import serialization

SCOPES = ("view", "admin", "metrics")


@dataclass(frozen=True)
class Principal:
    subject: str
    scopes: frozenset[str]
    #: Unix seconds after which its credential (token or signed URL) is no longer good; None: never
    #: (AUTH_MODE=off). A long answer (the event stream) ends then.
    expires: Optional[float] = None

    def can(self, scope: str) -> bool:
        """`admin` may do everything."""
        return scope in self.scopes or "admin" in self.scopes


#: who everyone is with AUTH_MODE=off (local use: everything open)
ANONYMOUS = Principal("anonymous", frozenset(SCOPES))


class KeyFileError(ValueError):
    def __init__(self, setting: str, reason: str) -> None:
        super().__init__(f"Invalid setting {setting}: {reason}")
        self.setting = setting


class TokenError(Exception):
    """The token is refused; the message says why, never echoing the token."""


#: why a token is refused, by PyJWT's exception (the first match wins; subclasses come first)
REFUSALS = [
    (jwt.ExpiredSignatureError, "The token has expired."),
    (jwt.ImmatureSignatureError, "The token is not valid yet (nbf or iat is in the future)."),
    (jwt.InvalidAudienceError, "The token's audience (aud) is not this service."),
    (jwt.InvalidIssuerError, "The token's issuer (iss) is not trusted here."),
    (jwt.InvalidSignatureError, "The token's signature does not verify."),
    (jwt.InvalidAlgorithmError, "The token's algorithm is not accepted here."),
    (jwt.InvalidKeyError, "The token's key does not fit its algorithm."),
]


def _refusal(exc: Exception) -> str:
    return next((text for kind, text in REFUSALS if isinstance(exc, kind)), "The token is malformed.")


class TokenVerifier:
    def __init__(self, algorithms: list[str], secret: Optional[str] = None, public_key_file: Optional[Path] = None,
                 jwks_file: Optional[Path] = None, issuer: Optional[str] = None, audience: Optional[str] = None,
                 leeway_s: float = 10.0) -> None:
        self.algorithms = list(algorithms)
        self.secret = secret
        # parsed now, so that a key file that does not parse stops start-up rather than every request
        try:
            self.public_key = (serialization.load_pem_public_key(public_key_file.read_bytes())
                               if public_key_file else None)
        except Exception as exc:
            raise KeyFileError("JWT_PUBLIC_KEY_FILE", f"not a PEM public key ({type(exc).__name__})") from None
        try:
            self.jwks = jwt.PyJWKSet.from_json(jwks_file.read_text()) if jwks_file else None
        except Exception as exc:
            raise KeyFileError("JWT_JWKS_FILE", f"not a usable JWKS ({type(exc).__name__})") from None
        if self.jwks is not None and len(self.jwks.keys) > 1 and any(not k.key_id for k in self.jwks.keys):
            raise KeyFileError("JWT_JWKS_FILE", "every key of a JWKS with several keys needs a kid")
        self.issuer, self.audience, self.leeway = issuer, audience, leeway_s

    def _key(self, header: dict):
        alg = header.get("alg") if isinstance(header, dict) else None
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise TokenError("The token's algorithm is not accepted here.")  # never echo token parts
        if alg.startswith("HS"):
            return self.secret
        kid = header.get("kid")
        if self.jwks is not None and (kid or self.public_key is None):
            if not kid and len(self.jwks.keys) == 1:
                return self.jwks.keys[0].key  # a one-key JWKS: no kid needed
            try:
                return self.jwks[str(kid)].key
            except KeyError:
                raise TokenError("The token's key id (kid) is unknown.") from None
        return self.public_key

    def verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(token, self._key(header), algorithms=[header["alg"]], audience=self.audience,
                                issuer=self.issuer, leeway=self.leeway,
                                options={"require": ["exp", "sub"], "verify_aud": self.audience is not None})
        except TokenError:
            raise
        except jwt.MissingRequiredClaimError as exc:
            raise TokenError(f"The token lacks the required claim {exc.claim!r}.") from None
        except (jwt.PyJWTError, KeyError, ValueError, TypeError) as exc:
            raise TokenError(_refusal(exc)) from None
        sub = claims["sub"]
        if not isinstance(sub, str) or not 1 <= len(sub) <= 128:
            raise TokenError("The token's subject (sub) must be a string of 1 to 128 characters.")
        scope = claims.get("scope", "")
        scopes = frozenset(scope.split()[:16]) if isinstance(scope, str) else frozenset()
        return Principal(sub, scopes & frozenset(SCOPES), float(claims["exp"]) + self.leeway)


class UrlSigner:
    """`?exp=<unix s>&sub=<subject>&sig=<base64url HMAC-SHA256>` over method, path, exp, sub and
    scope: valid for one path, for at most `ttl_s`, bound to the subject and the scope it grants."""

    def __init__(self, key: Optional[bytes] = None, ttl_s: int = 300) -> None:
        self.key = key or secrets.token_bytes(32)
        self.ttl_s = ttl_s

    def _mac(self, method: str, path: str, exp: int, sub: str, scope: str) -> str:
        message = "\n".join((method.upper(), path, str(exp), sub, scope)).encode()
        return base64.urlsafe_b64encode(hmac.new(self.key, message, hashlib.sha256).digest()).rstrip(b"=").decode()

    def sign(self, path: str, sub: str, scope: str = "view", method: str = "GET",
             now: Optional[float] = None) -> tuple[str, int]:
        """The signed URL (path and query) and its expiry (Unix seconds)."""
        exp = int(now if now is not None else time.time()) + self.ttl_s
        sig = self._mac(method, path, exp, sub, scope)
        return f"{path}?exp={exp}&sub={quote(sub, safe='')}&sig={sig}", exp

    def verify(self, method: str, path: str, exp: str, sub: str, sig: str, scope: str = "view") -> bool:
        try:
            expiry = int(exp)
        except ValueError:
            return False
        now = time.time()
        if expiry < now or expiry > now + self.ttl_s + 1:
            return False
        # bytes: compare_digest refuses non-ASCII text (a client-given sig must never be a 500)
        return hmac.compare_digest(self._mac(method, path, expiry, sub, scope).encode(), sig.encode("utf-8", "replace"))


def mint_token(secret: str, sub: str, scope: str, ttl_s: int, algorithm: str = "HS256", **claims) -> str:
    """A token for local testing (scripts/make-token.py and the tests)."""
    now = int(time.time())
    return jwt.encode({"sub": sub, "scope": scope, "iat": now, "exp": now + ttl_s, **claims}, secret,
                      algorithm=algorithm)
