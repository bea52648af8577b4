"""HTTP status and JSON body of every error the gateway returns, decided in one place.

Error bodies are ``{"error": {"code": "...", "message": "..."}}`` with the stable code of
the :class:`model.errors.SATsError` raised, so clients can act on the code.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from model.errors import InputError, SATsError

logger = logging.getLogger(__name__)

#: HTTP status per error code prefix or exact code; the longest match wins.
STATUS_BY_CODE = {
    "auth.": 401,
    "auth.rate_limited": 429,
    "auth.too_many_failures": 429,
    "job.not_found": 404,
    "result.not_found": 404,
    "result.not_ready": 409,
    "upload.too_large": 413,
    "upload.too_many_files": 413,
    "input.zip_too_large": 413,
    "upload.unsupported_media_type": 415,
    "service.unavailable": 503,
}


class ApiError(SATsError):
    """An error in a request that is not about the uploaded data (auth, missing job)."""

    code = "request.invalid"


def status_for(error: SATsError) -> int:
    """Return the HTTP status for ``error``: the longest matching entry, else 400 or 500."""
    matches = [key for key in STATUS_BY_CODE if error.code == key or (key.endswith(".") and error.code.startswith(key))]
    if matches:
        return STATUS_BY_CODE[max(matches, key=len)]
    return 400 if isinstance(error, InputError | ApiError) else 500


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"code": code, "message": message}}


def install_handlers(app: FastAPI) -> None:
    """Map :class:`SATsError` to its status and body on ``app``."""

    @app.exception_handler(SATsError)
    async def _handle(request: Request, error: SATsError) -> JSONResponse:
        status = status_for(error)
        if status >= 500:
            logger.error("%s %s failed: %s [%s]", request.method, request.url.path, error, error.code)
        else:
            logger.info("%s %s rejected: %s [%s]", request.method, request.url.path, error, error.code)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        retry_after = getattr(error, "retry_after_s", None)
        if retry_after is not None:
            headers = {"Retry-After": str(retry_after)}
        return JSONResponse(error_body(error.code, str(error)), status_code=status, headers=headers)
