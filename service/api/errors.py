"""The one place where errors become HTTP responses: always JSON ``{"error": "..."}``, never a stack trace."""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from service.accounting import ECHOED_HEADERS
from service.errors import ServiceError

log = logging.getLogger(__name__)
CLIENT_LEFT = "the client went away before sending the whole body"


def encode_json(content: object) -> bytes:
    """The bytes ``fastapi.responses.JSONResponse`` writes for ``content`` (for the pure-ASGI layers)."""
    return json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode()


def error_response(status_code: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status_code, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(request: Request, error: ServiceError) -> JSONResponse:
        return error_response(error.status_code, error.message, error.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid request: " + "; ".join(_said_plainly(p) for p in error.errors()))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        headers = _with_head(getattr(error, "headers", None))
        return error_response(error.status_code, _plain_message(request, error, headers), headers)

    @app.exception_handler(ClientDisconnect)
    async def client_left(request: Request, error: ClientDisconnect) -> JSONResponse:
        # the client's fault, not the service's: a 400, as the raw-image path answers it (fast_classify.py),
        # not an unhandled error counted as a 500; nobody reads the answer
        return error_response(400, CLIENT_LEFT)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        response = error_response(500, "internal error; the service logged the details")
        # this answer is sent from outside the middleware (Starlette's outermost layer): add what it adds to others
        response.raw_headers += request.scope.get("state", {}).get(ECHOED_HEADERS, [])
        return response


def _said_plainly(problem: dict) -> str:
    """One of FastAPI's validation problems as a user reads it: the field it is about, then what is wrong; a body
    that is no JSON or no body at all said so (not ``1: JSON decode error``, a bare ``Field required``)."""
    location = problem.get("loc", ())
    where = ".".join(str(part) for part in location if part != "body")
    if problem.get("type") == "json_invalid":
        detail = (problem.get("ctx") or {}).get("error")
        return "the body is not valid JSON" + (f" ({detail} at character {where})" if detail and where else "")
    if problem.get("type") == "missing" and tuple(location) == ("body",):
        return "a JSON body is required"
    message = str(problem.get("msg")).removeprefix("Value error, ")  # pydantic's prefix to a validator's message
    return f"{where}: {message}" if where else message


def _with_head(headers: dict[str, str] | None) -> dict[str, str] | None:
    """A 405's ``Allow`` with HEAD wherever it names GET: the service answers HEAD there (middleware.HeadAsGet)."""
    allowed = (headers or {}).get("Allow")
    methods = allowed.split(", ") if allowed is not None else []
    if "GET" not in methods or "HEAD" in methods:
        return headers
    return {**headers, "Allow": f"{allowed}, HEAD"}


def _plain_message(request: Request, error: HTTPException, headers: dict[str, str] | None) -> str:
    """Starlette's bare "Not Found" and "Method Not Allowed" (an unknown path, a wrong method) said plainly."""
    asked = f"{request.method} {request.url.path}"
    if error.status_code == 404 and error.detail == "Not Found":
        return f"nothing at {asked}; the API is described at /docs"
    if error.status_code == 405 and error.detail == "Method Not Allowed":
        allowed = (headers or {}).get("Allow")  # Starlette's router names the methods the path takes
        return f"{asked} is not allowed" + (f"; {request.url.path} takes {allowed}" if allowed else "")
    return str(error.detail)
