"""API-key authentication, per-client rate limits and the audit log.

Every route but ``/healthz`` and ``/readyz`` needs ``Authorization: Bearer <key>``. Each
configured key belongs to a named client (see ``SATS_API_KEY_SHA256``). A request of a known
client counts against its per-minute limit and is written to the audit log (logger
``sats.audit``) with the client name, method, path and status. The API's paths contain job
ids and DICOM UIDs, not patient data.

Invalid keys are counted per client address. An address that sent
``SATS_AUTH_FAILURES_PER_MINUTE`` invalid keys in the current minute gets 429 for every
request with a key until the minute ends, before its key is checked, so keys cannot be
guessed at full speed. Behind a reverse proxy the address is the proxy's unless uvicorn
trusts the proxy's ``X-Forwarded-For`` (``FORWARDED_ALLOW_IPS``).
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.errors import ApiError
from app.schemas import ErrorBody
from app.settings import Settings, key_digest

logger = logging.getLogger(__name__)
audit_logger = logging.getLogger("sats.audit")

_bearer = HTTPBearer(auto_error=False, description="An API key configured by the operator (SATS_API_KEY_SHA256).")

#: Length of one rate-limit window in seconds.
RATE_WINDOW_S = 60

#: OpenAPI response of every route that needs a key, for the routers' ``responses``.
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Missing or invalid API key."},
    429: {
        "model": ErrorBody,
        "description": "Too many requests of this client (auth.rate_limited) or too many invalid keys from "
        "this address (auth.too_many_failures) in the current minute; see the Retry-After header.",
    },
}


class RateLimited(ApiError):  # noqa: N818 (the gateway answers it with 429)
    """A client passed its request limit; the gateway returns 429 with Retry-After."""

    code = "auth.rate_limited"

    def __init__(self, message: str, retry_after_s: int, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s


def client_for_key(key: str, clients: list[tuple[str, str]]) -> str | None:
    """Return the client name whose digest matches ``key``, comparing every digest in constant time."""
    candidate = key_digest(key)
    found = None
    for name, digest in clients:
        if hmac.compare_digest(candidate, digest):
            found = name
    return found


def _current_window() -> tuple[float, int]:
    """Return the time now and the index of the fixed rate-limit window it falls in."""
    now = time.time()
    return now, int(now // RATE_WINDOW_S)


def _retry_after_s(window: int, now: float) -> int:
    """Return the whole seconds until ``window`` ends, at least 1."""
    return max(1, int((window + 1) * RATE_WINDOW_S - now) + 1)


def _count(request: Request, key: str) -> int:
    """Increment the Redis counter ``key`` of the current window and return its new value."""
    with request.app.state.store.redis.pipeline() as pipe:
        pipe.incr(key)
        pipe.expire(key, 2 * RATE_WINDOW_S)
        count, _ = pipe.execute()
    return int(count)


def client_address(request: Request) -> str:
    """Return the peer address of ``request`` (the ``X-Forwarded-For`` client where uvicorn trusts the proxy)."""
    return request.client.host if request.client is not None else "unknown"


def _failures_key(address: str, window: int) -> str:
    return f"sats:authfail:{address}:{window}"


def _check_failures(request: Request, address: str, settings: Settings) -> None:
    """Reject a request from ``address`` once it sent the allowed number of invalid keys this minute."""
    limit = settings.auth_failures_per_minute
    if limit == 0:
        return
    now, window = _current_window()
    failures = request.app.state.store.redis.get(_failures_key(address, window))
    if failures is not None and int(failures) >= limit:
        retry_after = _retry_after_s(window, now)
        raise RateLimited(
            f"address {address} sent {limit} or more invalid API keys this minute "
            f"(SATS_AUTH_FAILURES_PER_MINUTE); retry after {retry_after} s",
            retry_after_s=retry_after,
            code="auth.too_many_failures",
        )


def _record_failure(request: Request, address: str, settings: Settings) -> None:
    limit = settings.auth_failures_per_minute
    if limit == 0:
        return
    _, window = _current_window()
    count = _count(request, _failures_key(address, window))
    if count == limit:  # once per address and window, however many more follow
        logger.warning(
            "address %s sent %d invalid API keys this minute; its requests get 429 until the minute ends",
            address,
            count,
        )


def _check_rate(request: Request, client: str, settings: Settings) -> None:
    limit = settings.rate_limit_per_minute
    if limit == 0:
        return
    now, window = _current_window()
    count = _count(request, f"sats:rate:{client}:{window}")
    if count > limit:
        retry_after = _retry_after_s(window, now)
        raise RateLimited(
            f"client {client} sent more than {limit} requests this minute (SATS_RATE_LIMIT_PER_MINUTE); "
            f"retry after {retry_after} s",
            retry_after_s=retry_after,
        )


def require_api_key(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """Reject the request unless it carries a configured API key within the rate limits.

    The address's invalid-key limit is checked before the key, so that a blocked address
    learns nothing about the keys it sends. Then the client's request limit is checked.
    """
    settings: Settings = request.app.state.settings
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise ApiError("missing API key; send 'Authorization: Bearer <key>'", code="auth.missing_key")
    address = client_address(request)
    _check_failures(request, address, settings)
    client = client_for_key(credentials.credentials, settings.api_clients)
    if client is None:
        _record_failure(request, address, settings)
        raise ApiError("invalid API key", code="auth.invalid_key")
    request.state.client = client
    _check_rate(request, client, settings)


def install_audit_log(app: FastAPI) -> None:
    """Log one ``sats.audit`` line per request of an authenticated client."""

    @app.middleware("http")
    async def _audit(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        client = getattr(request.state, "client", None)
        if client is not None:
            audit_logger.info(
                "client=%s method=%s path=%s status=%d", client, request.method, request.url.path, response.status_code
            )
        return response
