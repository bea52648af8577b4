"""The gateway's FastAPI application (run with ``uvicorn --factory app.main:create_app``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import redis
from fastapi import FastAPI

from app import __version__
from app.auth import install_audit_log
from app.errors import install_handlers
from app.reaper import sweep
from app.routes import dicomweb, health, jobs, status
from app.settings import Settings, get_settings
from app.store import JobStore

logger = logging.getLogger(__name__)

DESCRIPTION = """\
SATs contours the nasopharyngeal GTV on planning CT. Send a CT series with DICOMweb
STOW-RS (`POST /dicomweb/studies`) or as a plain upload (`POST /v1/studies`); one job is
created per CT series. Poll `GET /v1/jobs/{id}` and fetch the RTSTRUCT, SEG, QA picture
and report when the job is completed, or retrieve the result series with WADO-RS.

Every route except `/healthz` and `/readyz` needs `Authorization: Bearer <API key>`.
**Research use only. Not for clinical use.**
"""


async def _reaper_loop(app: FastAPI) -> None:
    settings: Settings = app.state.settings
    while True:
        await asyncio.sleep(settings.reaper_interval_s)
        try:
            await asyncio.to_thread(sweep, app.state.store, settings)
        except redis.RedisError as error:
            logger.warning("sweep skipped: Redis unreachable: %s", error)
        except OSError as error:
            logger.error("sweep failed: %s", error)


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    for folder in (settings.incoming_dir, settings.inputs_dir, settings.results_dir):
        folder.mkdir(parents=True, exist_ok=True)
    task = asyncio.create_task(_reaper_loop(app))
    logger.info(
        "gateway started; data in %s, API keys of client(s) %s",
        settings.data_dir,
        ", ".join(name for name, _ in settings.api_clients),
    )
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        logger.info("gateway stopped")


def _configure_logging() -> None:
    """Send the gateway's own records (INFO and above, the audit log included) to stderr.

    uvicorn configures only its own loggers, so without this the gateway's records would be
    dropped. A process that has set up logging already (a test runner, ``--log-config``)
    keeps its configuration.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Create the gateway for ``settings`` (default: from ``SATS_*`` environment variables).

    Raises
    ------
    RuntimeError
        If no API key is configured: the service has no built-in key.
    """
    _configure_logging()
    settings = settings or get_settings()
    if not settings.api_key_sha256:
        raise RuntimeError(
            "no API key configured: set SATS_API_KEY_SHA256 to the SHA-256 digest of at least one key "
            "(`sats api-key` prints a new key and its digest)"
        )
    app = FastAPI(
        title="SATs gateway",
        version=__version__,
        description=DESCRIPTION,
        lifespan=_lifespan,
    )
    app.state.settings = settings
    app.state.store = JobStore.from_url(settings.redis_url)
    install_handlers(app)
    install_audit_log(app)
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(dicomweb.router)
    app.include_router(status.router)
    return app
