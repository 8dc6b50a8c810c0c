"""Access control as route dependencies (`AUTH_MODE`; names and codes: CONTRACT.md).

- `AUTH_MODE=off`: everyone is `ANONYMOUS`, with every scope (local use).
- `AUTH_MODE=jwt`: `Authorization: Bearer <token>` (FastAPI's `HTTPBearer`), checked by
  `api.tokens.TokenVerifier`. No or a bad token → 401 with `WWW-Authenticate: Bearer`; a good
  token without the scope → 403. A token in a URL is never looked at.
- Media a browser loads without headers (snapshots; later event snapshots, recordings, the
  event stream) also take a signed URL (`?exp=&sub=&sig=`, `api.tokens.UrlSigner`).

A route states what it needs in its signature: `principal: ViewerDep`, `AdminDep`, `MediaViewerDep`.
"""

from __future__ import annotations

from typing import Annotated, Optional

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.deps import get_services
from api.errors import ApiError
from api.tokens import ANONYMOUS, Principal, TokenError

#: what a protected route adds to its documented answers
AUTH_ERRORS = {401: "No valid bearer token (AUTH_MODE=jwt; code `invalid_token`, `WWW-Authenticate: Bearer`)",
               403: "The token lacks the scope this route needs (code `insufficient_scope`)"}

bearer = HTTPBearer(auto_error=False, description="A JWT from your identity provider (AUTH_MODE=jwt); "
                    "its `scope` claim holds `view`, `admin` and/or `metrics`.")


def _unauthorized(detail: str, error: Optional[str] = "invalid_token") -> ApiError:
    # RFC 6750: error_description is printable ASCII without '"' or '\\'
    safe = "".join(c for c in detail if 0x20 <= ord(c) < 0x7F and c not in '"\\')
    challenge = "Bearer" if error is None else f'Bearer error="{error}", error_description="{safe}"'
    return ApiError(401, detail, "invalid_token", headers={"WWW-Authenticate": challenge})


async def principal(request: Request,
                    credentials: Annotated[Optional[HTTPAuthorizationCredentials], Depends(bearer)]) -> Principal:
    verifier = get_services(request).tokens
    if verifier is None:  # AUTH_MODE=off
        return ANONYMOUS
    if credentials is None:
        # RFC 6750 §3.1: no error code when the request carried no credentials
        raise _unauthorized("This route needs an 'Authorization: Bearer <token>' header.", error=None)
    try:
        return verifier.verify(credentials.credentials)
    except TokenError as exc:
        raise _unauthorized(str(exc)) from None


def _require(found: Principal, scope: str) -> Principal:
    if not found.can(scope):
        raise ApiError(403, f"This needs the {scope!r} scope; the token has {sorted(found.scopes) or 'none'}.",
                       "insufficient_scope",
                       headers={"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{scope}"'})
    return found


def requires(scope: str):
    async def dependency(found: Annotated[Principal, Depends(principal)]) -> Principal:
        return _require(found, scope)

    return dependency


def media_requires(scope: str):
    """Like `requires`, but a valid signed URL for this very path also grants `scope`."""

    async def dependency(request: Request,
                         credentials: Annotated[Optional[HTTPAuthorizationCredentials], Depends(bearer)]) -> Principal:
        services = get_services(request)
        query = request.query_params
        if services.tokens is not None and "sig" in query:
            if services.signer.verify(request.method, request.url.path, query.get("exp", ""), query.get("sub", ""),
                                      query.get("sig", ""), scope):
                return Principal(query["sub"], frozenset({scope}), float(query["exp"]))
            raise _unauthorized("The signed URL is not valid for this path, or it has expired.")
        return _require(await principal(request, credentials), scope)

    return dependency


ViewerDep = Annotated[Principal, Depends(requires("view"))]
AdminDep = Annotated[Principal, Depends(requires("admin"))]
MetricsDep = Annotated[Principal, Depends(requires("metrics"))]
MediaViewerDep = Annotated[Principal, Depends(media_requires("view"))]
