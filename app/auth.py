"""API-key authentication: ``Authorization: Bearer <key>`` on every route but health."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.errors import ApiError
from app.settings import Settings, key_digest

_bearer = HTTPBearer(auto_error=False, description="An API key configured by the operator (SATS_API_KEY_SHA256).")


def key_matches(key: str, digests: list[str]) -> bool:
    """Compare the key's SHA-256 with every configured digest in constant time."""
    candidate = key_digest(key)
    found = False
    for digest in digests:
        found |= hmac.compare_digest(candidate, digest)
    return found


def require_api_key(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """Reject the request unless it carries a configured API key."""
    settings: Settings = request.app.state.settings
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise ApiError("missing API key; send 'Authorization: Bearer <key>'", code="auth.missing_key")
    if not key_matches(credentials.credentials, settings.api_key_sha256):
        raise ApiError("invalid API key", code="auth.invalid_key")
