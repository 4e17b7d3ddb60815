"""Errors are values with a status code and a plain message; one place maps them to HTTP responses."""

from __future__ import annotations


class ServiceError(Exception):
    status_code = 500

    def __init__(self, message: str, status_code: int | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code
        self.headers = headers or {}


class BadInput(ServiceError):
    status_code = 400


class UnsupportedMediaType(ServiceError):
    status_code = 415


class PayloadTooLarge(ServiceError):
    status_code = 413


class NotFound(ServiceError):
    status_code = 404


class Conflict(ServiceError):
    status_code = 409


class Unprocessable(ServiceError):
    status_code = 422


class Overloaded(ServiceError):
    """Queue full or shutting down: try again shortly."""

    status_code = 503

    def __init__(self, message: str, retry_after_s: int = 1):
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class DeadlineExceeded(ServiceError):
    status_code = 504


class Unavailable(ServiceError):
    """What answers is gone for a moment (a replica replaced): try again shortly."""

    status_code = 503

    def __init__(self, message: str, retry_after_s: int = 1):
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})
