"""One error shape for every route: `{"detail": "<one readable sentence>", "code": "<snake_case>"}`
(FastAPI's list of schema errors stays the `detail` of a 422)."""

from __future__ import annotations

import logging
from typing import Optional

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("visionguard")

#: the code an error gets when the route gives none
DEFAULT_CODES = {400: "bad_request", 401: "invalid_token", 403: "insufficient_scope", 404: "not_found",
                 405: "method_not_allowed", 409: "conflict", 413: "body_too_large", 422: "invalid_request",
                 500: "internal_error", 503: "unavailable"}


class ApiError(HTTPException):
    def __init__(self, status_code: int, detail: str, code: Optional[str] = None,
                 headers: Optional[dict[str, str]] = None) -> None:
        super().__init__(status_code, detail, headers)
        self.code = code or DEFAULT_CODES.get(status_code, "error")


class ErrorResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"detail": "The SDP offer has no video (m=video) section.", "code": "bad_offer"}]})

    detail: str
    code: str


def error_responses(descriptions: dict[int, str]) -> dict:
    """OpenAPI `responses` for these statuses, each with the error shape."""
    return {status: {"model": ErrorResponse, "description": text} for status, text in descriptions.items()}


def error_body(status: int, detail: str, code: Optional[str] = None) -> dict:
    return {"detail": detail, "code": code or DEFAULT_CODES.get(status, "error")}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = getattr(exc, "code", None)
        return JSONResponse(error_body(exc.status_code, str(exc.detail), code), status_code=exc.status_code,
                            headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's list of schema errors; bodies that are not JSON land here too.
        return JSONResponse({"detail": _jsonable_errors(exc.errors()), "code": "invalid_request"},
                            status_code=422)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body(500, "Internal server error; see the server log."), status_code=500)


def _jsonable_errors(errors) -> list:
    out = []
    for e in errors:
        e = dict(e)
        e.pop("ctx", None)  # may hold exception objects
        if isinstance(e.get("input"), (bytes, bytearray)):
            e["input"] = e["input"][:200].decode("utf-8", "replace")
        out.append(e)
    return out
