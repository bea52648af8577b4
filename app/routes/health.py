"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import logging

import redis
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.auth import AUTH_RESPONSES, require_api_key
from app.metrics import registry_for

logger = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the gateway process answers (no key needed)")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: Redis reachable and at least one worker alive (no key needed)",
    responses={503: {"description": "Not ready; the body names the reason."}},
)
def readyz(request: Request) -> JSONResponse:
    store = request.app.state.store
    try:
        store.ping()
        workers = store.live_workers()
    except redis.RedisError as error:
        logger.warning("readiness check: Redis unreachable: %s", error)
        return JSONResponse({"status": "not ready", "reason": f"Redis unreachable: {error}"}, status_code=503)
    if not workers:
        return JSONResponse({"status": "not ready", "reason": "no worker alive", "workers": []}, status_code=503)
    return JSONResponse({"status": "ready", "workers": workers})


@router.get(
    "/metrics",
    summary="Prometheus metrics: jobs by state, queue depth, live workers, stage durations",
    dependencies=[Depends(require_api_key)],
    response_class=Response,
    responses=AUTH_RESPONSES,
)
def metrics(request: Request) -> Response:
    registry = registry_for(request.app.state.store, request.app.state.settings.queue)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
