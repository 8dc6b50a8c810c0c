"""One error shape for every route: `{"detail": "<one readable sentence>", "code": "<snake_case>"}`
(FastAPI's list of schema errors stays the `detail` of a 422).

Whatever a client sent comes back short and JSON-safe: details are clipped, and the inputs
echoed in a 422's list lose NaN/Infinity, lone surrogates, depth and length."""

from __future__ import annotations

import json
import math
import re
from typing import Any, Optional, Union

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from api.deps import count_internal_error, node_id
from core.redact import clip


#: the code an error gets when the route gives none
DEFAULT_CODES = {400: "bad_request", 401: "invalid_token", 403: "insufficient_scope", 404: "not_found",
                 405: "method_not_allowed", 409: "conflict", 413: "body_too_large", 422: "invalid_request",
                 500: "internal_error", 503: "unavailable", 504: "cluster_timeout", 307: "moved"}

#: the longest `detail` sentence sent (longer ones quote too much of what the client sent)
MAX_DETAIL_CHARS = 500
#: how much of a client's input a 422 echoes: characters of a text, items of a list, levels
_ECHO_CHARS, _ECHO_ITEMS, _ECHO_DEPTH = 200, 20, 8


class ApiError(HTTPException):
    def __init__(self, status_code: int, detail: str, code: Optional[str] = None,
                 headers: Optional[dict[str, str]] = None) -> None:
        super().__init__(status_code, detail, headers)
        self.code = code or DEFAULT_CODES.get(status_code, "error")


async def single_query_values(request: Request) -> None:
    """A route dependency (a coroutine: no thread-pool hop): a query parameter given twice
    (`?source=a&source=b`) is refused rather than silently cut to one value."""
    for name in request.query_params:
        if len(request.query_params.getlist(name)) > 1:
            raise ApiError(400, f"Query parameter {name[:64]!r} is given more than once.", "bad_request")


class ErrorResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"detail": "The SDP offer has no video (m=video) section.", "code": "bad_offer"}]})

    detail: str
    code: str


class ValidationErrorResponse(BaseModel):
    """A 422: either a sentence (e.g. an undecodable video file) or FastAPI's list of schema errors."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"detail": "cannot decode clip.mp4: Invalid data found when processing input.", "code": "undecodable_media"},
        {"detail": [{"type": "missing", "loc": ["body", "sdp"], "msg": "Field required", "input": {}}],
         "code": "invalid_request"}]})

    detail: Union[str, list[dict[str, Any]]] = Field(
        description="One sentence, or for a body that does not fit the schema, FastAPI's list of errors "
                    "({type, loc, msg, input})")
    code: str


#: an example `detail` for each code (the sentence a route sends, with made-up names)
EXAMPLE_DETAILS = {
    "bad_request": "Query parameter 'source' is given more than once.",
    "bad_offer": "The SDP offer has no video (m=video) section.",
    "invalid_token": "This route needs an 'Authorization: Bearer <token>' header.",
    "insufficient_scope": "This needs the 'admin' scope; the token has ['view'].",
    "not_found": "Unknown source 'lobby'.",
    "not_recording": "Source 'lobby' is not being recorded.",
    "model_unavailable": "Model 'yolo' failed to load: ModelLoadError: MODEL_PATH is not set.",
    "already_recording": "Source lobby is already being recorded.",
    "still_recording": "This recording is still being written; stop it first.",
    "body_too_large": "Request body is larger than 65536 bytes.",
    "undecodable_media": "cannot decode clip.mp4: Invalid data found when processing input.",
    "range_not_satisfiable": "Range not satisfiable: the recording has 1048576 bytes.",
    "server_full": "The server is full; try again later.",
    "subject_limit": "You already hold 10 sessions (MAX_SESSIONS_PER_SUBJECT); close one or try again later.",
    "recordings_unavailable": "Cannot write to RECORDINGS_DIR: No space left on device.",
    "source_unavailable": "Source 'lobby' has no frame yet: cannot open rtsp://***@10.0.0.5/stream.",
    "cluster_unavailable": "The cluster is unavailable: Redis cannot be reached; try again shortly.",
    "cluster_timeout": "The cluster did not answer in time: node web-1-4242 did not answer offer within 10 s.",
    "saturated": "The server is saturated (its sending loop runs 180 ms late); a new viewer would get a few "
                 "frames a second. Try again later.",
    "moved": "Recording 20261129T101500Z-lobby-3f9c is stored on node web-2-777.",
}
#: `not_found` examples by what the description says is missing
_NOT_FOUND = [("session", "Session 3f9c2a61d0b14e7e not found."), ("recording", "No such recording."),
              ("event", "No snapshot for event 42."), ("source", "Unknown source 'lobby'.")]
_SCHEMA_ERROR = {"detail": [{"type": "missing", "loc": ["body", "sdp"], "msg": "Field required", "input": {}}],
                 "code": "invalid_request"}
#: "code `x`" in a description names the code(s) that status carries
_CODE = re.compile(r"\bcodes? `([a-z_]+)`")


def error_codes(status: int, description: str) -> list[str]:
    """The codes a documented status carries: those its description names ("code `x`"), else the
    status's default; a 422 may always be FastAPI's schema error (`invalid_request`)."""
    codes = list(dict.fromkeys(_CODE.findall(description))) or [DEFAULT_CODES[status]]
    if status == 422 and "invalid_request" not in codes:
        codes.append("invalid_request")
    return codes


def _example(code: str, description: str) -> dict:
    if code == "invalid_request":
        return {"summary": "The body or a parameter does not fit the schema", "value": _SCHEMA_ERROR}
    detail = EXAMPLE_DETAILS[code]
    if code == "not_found":
        detail = next((text for word, text in _NOT_FOUND if word in description.lower()), detail)
    return {"summary": code, "value": {"detail": detail, "code": code}}


def error_responses(descriptions: dict[int, str]) -> dict:
    """OpenAPI `responses` for these statuses, each with the error shape (a 422 may carry the list)
    and one named example per code it carries (a KeyError here: a code without EXAMPLE_DETAILS)."""
    return {status: {"model": ValidationErrorResponse if status == 422 else ErrorResponse, "description": text,
                     "content": {"application/json": {"examples": {
                         code: _example(code, text) for code in error_codes(status, text)}}}}
            for status, text in descriptions.items()}


def error_body(status: int, detail: str, code: Optional[str] = None) -> dict:
    return {"detail": clip(detail, MAX_DETAIL_CHARS), "code": code or DEFAULT_CODES.get(status, "error")}


def install_error_handlers(app: FastAPI) -> None:
    _document_schema_errors(app)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = getattr(exc, "code", None)
        headers = exc.headers
        if exc.status_code == 405:
            headers = {**(headers or {}), "Allow": _allowed_methods(request)}
        return JSONResponse(error_body(exc.status_code, str(exc.detail), code), status_code=exc.status_code,
                            headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's list of schema errors; bodies that are not JSON land here too.
        return JSONResponse({"detail": _jsonable_errors(exc.errors()), "code": "invalid_request"},
                            status_code=422)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        # no log here: Starlette re-raises after this answer and uvicorn logs the traceback once
        # (through the redacting, clipping log filter)
        count_internal_error(request)
        # this handler runs outside the app's middleware (Starlette's ServerErrorMiddleware): say the node here
        node = node_id(request)
        headers = {"X-VisionGuard-Node": node} if node is not None else None
        return JSONResponse(error_body(500, "Internal server error; see the server log."), status_code=500,
                            headers=headers)


def _document_schema_errors(app: FastAPI) -> None:
    """The 422 FastAPI adds to every route with parameters documents its own shape (no `code`);
    in the spec it becomes ours, with its example, like every other documented error."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        spec = build()
        ours = {"schema": {"$ref": "#/components/schemas/ValidationErrorResponse"},
                "examples": {"invalid_request": _example("invalid_request", "")}}
        for operation in (op for ops in spec.get("paths", {}).values() for op in ops.values()):
            response = operation.get("responses", {}).get("422")
            if response and response.get("description") == "Validation Error":
                response["content"] = {"application/json": ours}
        schemas = spec.get("components", {}).get("schemas", {})
        schemas.setdefault("ValidationErrorResponse", ValidationErrorResponse.model_json_schema())
        for name in ("HTTPValidationError", "ValidationError"):  # FastAPI's, now referenced by nothing
            if f'"#/components/schemas/{name}"' not in json.dumps(spec["paths"]):
                schemas.pop(name, None)
        return spec

    app.openapi = openapi


def _allowed_methods(request: Request) -> str:
    """Every method of every route at this path (Starlette names only the first route's)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        route_methods = getattr(route, "methods", None)
        if route_methods and route.matches(request.scope)[0] != Match.NONE:
            methods |= set(route_methods)
    return ", ".join(sorted(methods))


def _jsonable_errors(errors) -> list:
    out = []
    for e in errors:
        e = dict(e)
        e.pop("ctx", None)  # may hold exception objects
        if "input" in e:
            e["input"] = _echo(e["input"])
        if "msg" in e:
            e["msg"] = clip(str(e["msg"]), MAX_DETAIL_CHARS)
        if "loc" in e:
            e["loc"] = [x if isinstance(x, int) else clip(str(x), 100) for x in e["loc"]]
        out.append(e)
    return out


def _echo(value: Any, depth: int = 0) -> Any:
    """A client's input as JSON can carry it: short, finite, encodable, shallow."""
    if value is None or isinstance(value, (bool, int)):
        return value if not isinstance(value, int) or abs(value) < 2 ** 63 else clip(str(value), 40)
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)  # NaN and Infinity are not JSON
    if isinstance(value, str):
        return clip(value, _ECHO_CHARS)
    if isinstance(value, (bytes, bytearray)):
        return clip(bytes(value[:_ECHO_CHARS * 4]).decode("utf-8", "replace"), _ECHO_CHARS)
    if depth >= _ECHO_DEPTH:
        return "…"
    if isinstance(value, dict):
        return {clip(str(k), 100): _echo(v, depth + 1) for k, v in list(value.items())[:_ECHO_ITEMS]}
    if isinstance(value, (list, tuple)):
        return [_echo(v, depth + 1) for v in value[:_ECHO_ITEMS]]
    return clip(repr(value), _ECHO_CHARS)
