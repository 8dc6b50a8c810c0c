"""`POST /api/signed-url`: a short-lived URL for media a browser loads without headers (an
`<img>`, a `<video>`, a download, the event stream), for a path the caller's token may read."""

from __future__ import annotations

import re

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from api.auth import ViewerDep
from api.deps import ServicesDep
from api.errors import ApiError, error_responses

router = APIRouter(prefix="/api", tags=["access"])

#: the media paths a signed URL may open (each with the scope it grants)
SIGNABLE = [(re.compile(r"^/api/sources/[A-Za-z0-9][A-Za-z0-9_.-]{0,63}/snapshot\.jpg$"), "view"),
            (re.compile(r"^/api/events/[0-9]{1,18}/snapshot\.jpg$"), "view"),
            (re.compile(r"^/api/events/stream$"), "view"),
            (re.compile(r"^/api/recordings/[0-9a-f]{32}$"), "view")]


class SignedUrlRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"path": "/api/sources/lobby/snapshot.jpg"}]})

    path: str = Field(max_length=512, description="The media path to sign, e.g. a source's snapshot.")


class SignedUrlResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "url": "/api/sources/lobby/snapshot.jpg?exp=1764417600&sub=alice&sig=3q2-7w", "expires_at": 1764417600}]})

    url: str = Field(description="Path and query, valid for this path alone until `expires_at`.")
    expires_at: int = Field(description="Unix seconds (at most SIGNED_URL_TTL_S from now).")


@router.post("/signed-url", response_model=SignedUrlResponse, summary="Sign a media URL for the browser",
             responses=error_responses({400: "Not a media path that can be signed (code `bad_request`)",
                                        401: "No valid bearer token (code `invalid_token`)",
                                        403: "The token lacks the scope that path needs (code `insufficient_scope`)"}))
async def signed_url(body: SignedUrlRequest, services: ServicesDep, caller: ViewerDep) -> SignedUrlResponse:
    """A URL bound to this path, to the caller's subject and to the scope the path needs. No
    bearer token ever travels in a URL: this is what `<img src>` and `<video src>` use."""
    scope = next((scope for pattern, scope in SIGNABLE if pattern.fullmatch(body.path)), None)
    if scope is None:
        raise ApiError(400, "Only media paths can be signed (e.g. /api/sources/<name>/snapshot.jpg, "
                            "/api/recordings/<id>).", "bad_request")
    if not caller.can(scope):
        raise ApiError(403, f"This path needs the {scope!r} scope.", "insufficient_scope")
    url, expires = services.signer.sign(body.path, caller.subject, scope)
    return SignedUrlResponse(url=url, expires_at=expires)
