"""Service settings, read from ``SATS_*`` environment variables (one typed object).

The gateway and the workers read the same settings, so one environment file configures a
deployment. docs/deployment.md lists every variable; a test keeps that table complete.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from model.errors import InputError

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_CLIENT_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

#: An AE title: 1 to 16 characters of the DICOM default repertoire, no backslash, not
#: only spaces (PS3.5 table 6.2-1, value representation AE).
_AE_TITLE = re.compile(r"^(?! *$)[ -\[\]-~]{1,16}$")


def check_ae_title(value: str) -> str:
    """Return ``value`` stripped if it is a valid AE title, else raise ValueError naming it."""
    title = value.strip()
    if not _AE_TITLE.match(title):
        raise ValueError(f"AE title {value!r} is invalid: use 1 to 16 ASCII characters without a backslash")
    return title


def _check_tls_pair(owner: str, cert: Path | None, key: Path | None) -> None:
    """Require a certificate and its key together.

    The files are checked where they are used (the listener at start, the worker at
    delivery), because the other processes read the same settings without the files.
    """
    if (cert is None) != (key is None):
        raise ValueError(f"{owner}: a TLS certificate and its private key must be given together")


def require_tls_files(owner: str, *paths: Path | None) -> None:
    """Raise :class:`InputError` naming the first of ``paths`` that is not a readable file."""
    for path in paths:
        if path is not None and not path.is_file():
            raise InputError(
                f"{owner}: TLS file {path} does not exist or is not a file; mount it into this container",
                code="config.tls_file_missing",
            )


class Destination(BaseModel):
    """A place where results are delivered: a DICOM C-STORE SCP or a DICOMweb STOW-RS service."""

    name: str = Field(description="Name used in the job record and the logs.")
    kind: Literal["dicom", "dicomweb"]
    ae_title: str | None = Field(None, description="Called AE title (kind dicom).")
    host: str | None = Field(None, description="Host name or address (kind dicom).")
    port: int | None = Field(None, gt=0, lt=65536, description="TCP port (kind dicom).")
    url: str | None = Field(None, description="DICOMweb base URL, without /studies (kind dicomweb).")
    authorization: str | None = Field(
        None, description="Authorization header value for DICOMweb, for example 'Bearer <token>'."
    )
    tls: bool = Field(False, description="Connect with TLS (kind dicom); the destination's certificate is checked.")
    tls_ca: Path | None = Field(
        None, description="PEM CA certificates that sign the destination's certificate (default: the system's CAs)."
    )
    tls_cert: Path | None = Field(None, description="PEM client certificate, for a destination that requires one.")
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert.")
    timeout_s: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="Seconds to wait for the destination: association, each C-STORE response, each HTTP exchange.",
    )
    always: bool = Field(
        True,
        description="Deliver every job here; when false, deliver only jobs whose series this destination sent "
        "(with SATS_ROUTE_TO_SENDER).",
    )

    @model_validator(mode="after")
    def _check_kind(self) -> Destination:
        if self.kind == "dicom":
            if not (self.ae_title and self.host and self.port):
                raise ValueError(f"destination {self.name!r} of kind dicom needs ae_title, host and port")
            self.ae_title = check_ae_title(self.ae_title)
            _check_tls_pair(f"destination {self.name!r}", self.tls_cert, self.tls_key)
        elif not self.url:
            raise ValueError(f"destination {self.name!r} of kind dicomweb needs url")
        return self


class Settings(BaseSettings):
    """Every setting of the gateway and the workers, with its unit and default."""

    model_config = SettingsConfigDict(env_prefix="SATS_", extra="ignore")

    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis URL of the job store and the Celery broker (database number included).",
    )
    data_dir: Path = Field(
        Path("sats-data"),
        description="Folder for received series and results, shared by the gateway and every worker "
        "(a shared volume in docker-compose).",
    )
    api_key_sha256: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated SHA-256 hex digests of the accepted API keys, each optionally named "
        "`client:digest` (the name appears in the audit log and keys the rate limit; default name "
        "`key-` and the digest's first 8 digits). Two keys may share a name, for example the old and the new "
        "key while a client changes over. No key is built in; `sats api-key` prints a new key and its digest. "
        "The gateway does not start without one.",
    )
    rate_limit_per_minute: int = Field(
        1200,
        ge=0,
        description="Most requests one client (all keys of one name) may make per minute (a fixed one-minute "
        "window in Redis); an open status page makes about 300. "
        "more get 429 with Retry-After. 0 turns the limit off. /healthz and /readyz need no key and are not counted.",
    )
    auth_failures_per_minute: int = Field(
        20,
        ge=0,
        description="Most invalid API keys one client address may send per minute (a fixed one-minute window "
        "in Redis). After that, its requests with any key get 429 with Retry-After until the minute ends, "
        "valid keys included. Behind a reverse proxy, set FORWARDED_ALLOW_IPS to the proxy's address so "
        "that this counts each client's address and not the proxy's. 0 turns the limit off.",
    )
    max_upload_bytes: int = Field(
        4 * 1024**3, gt=0, description="Largest accepted request body in bytes (default 4 GiB); larger gets 413."
    )
    max_upload_files: int = Field(
        5000, gt=0, description="Most files (DICOM parts or zip entries) in one request; more gets 413."
    )
    retention_hours: float = Field(
        168.0,
        ge=0,
        description="Hours after which a finished job's inputs, results and record are deleted; 0 keeps them.",
    )
    job_time_limit_s: int = Field(
        3600, gt=0, description="Hard time limit of one job in seconds; the worker process is replaced past it."
    )
    visibility_timeout_s: int = Field(
        7200,
        gt=0,
        description="Seconds before Redis hands an unacknowledged job to another worker; must exceed "
        "job_time_limit_s so that a running job is never delivered twice.",
    )
    max_retries: int = Field(
        3, ge=0, description="Retries of a job after a transient fault (storage or Redis); bad input is never retried."
    )
    worker_heartbeat_s: float = Field(
        10.0, gt=0, description="Seconds between worker heartbeats; a worker silent for 3 heartbeats counts as lost."
    )
    reaper_interval_s: float = Field(
        30.0, gt=0, description="Seconds between the gateway's checks for lost jobs and expired data."
    )
    model_path: Path | None = Field(
        None, description="Model weights (.safetensors with .json beside it); default: the shipped model."
    )
    atlas_path: Path | None = Field(None, description="Symmetric atlas NIfTI; default: the shipped atlas.")
    device: str = Field(
        "auto",
        description="Torch device of the workers: auto (CUDA when available, else CPU with a warning), "
        "cpu or cuda[:N].",
    )
    step_fraction: float = Field(0.5, gt=0, le=1, description="Sliding-window step as a fraction of the patch size.")
    mirror_tta: bool = Field(False, description="Average with the mirror image's prediction (about 2x slower).")
    queue: str = Field("sats", description="Celery queue of segmentation jobs.")
    dicom_ae_title: str = Field("SATS", description="AE title of the DICOM listener (C-STORE and C-ECHO SCP).")
    dicom_port: int = Field(11112, gt=0, lt=65536, description="TCP port of the DICOM listener.")
    dicom_bind_address: str = Field("0.0.0.0", description="Address the DICOM listener binds to.")
    dicom_allowed_aets: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated calling AE titles allowed to send; associations from others are "
        "rejected. The listener does not start without one.",
    )
    dicom_tls_cert: Path | None = Field(
        None,
        description="PEM certificate (chain) of the DICOM listener. With SATS_DICOM_TLS_KEY the listener "
        "accepts TLS connections only (TLS 1.2 or newer).",
    )
    dicom_tls_key: Path | None = Field(None, description="PEM private key of SATS_DICOM_TLS_CERT.")
    dicom_tls_ca: Path | None = Field(
        None,
        description="PEM CA certificates; when set, a sender must present a client certificate signed by one "
        "of them (mutual TLS). Needs SATS_DICOM_TLS_CERT.",
    )
    dicom_quiet_period_s: float = Field(
        15.0,
        gt=0,
        description="Seconds without a new instance after which a series received over DICOM is complete "
        "and its job is queued.",
    )
    destinations: list[Destination] = Field(
        default_factory=list,
        description="JSON list of result destinations, for example "
        '[{"name": "pacs", "kind": "dicom", "ae_title": "PACS", "host": "pacs.local", "port": 104}]. '
        "RTSTRUCT and SEG go to each after a job completes.",
    )
    route_to_sender: bool = Field(
        False,
        description="Also deliver to the configured DICOM destination whose AE title is the calling AE title "
        "of a series received over DICOM, even if it is not marked always.",
    )
    delivery_retries: int = Field(
        5, ge=0, description="Retries of a delivery after a transient failure, with back-off 10 s, 20 s, 40 s..."
    )
    public_url: str | None = Field(
        None,
        description="External base URL of the gateway (for example https://sats.hospital.example), used in "
        "DICOMweb RetrieveURL values; default: the URL of the request.",
    )

    @field_validator("api_key_sha256", mode="before")
    @classmethod
    def _split_digests(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("api_key_sha256")
    @classmethod
    def _check_digests(cls, value: list[str]) -> list[str]:
        entries = []
        for entry in value:
            name, _, digest = entry.rpartition(":")
            digest = digest.lower()
            if not _SHA256_HEX.match(digest):
                raise ValueError(
                    f"SATS_API_KEY_SHA256 entry {digest[:12]!r}... is not a 64-digit SHA-256 hex digest; "
                    "store digests, not keys (see `sats api-key`)"
                )
            if name and not _CLIENT_NAME.match(name):
                raise ValueError(
                    f"SATS_API_KEY_SHA256 client name {name!r} must be 1 to 64 letters, digits, '.', '_' or '-'"
                )
            entries.append(f"{name}:{digest}" if name else digest)
        return entries

    @property
    def api_clients(self) -> list[tuple[str, str]]:
        """The configured keys as (client name, SHA-256 digest) pairs."""
        pairs = []
        for entry in self.api_key_sha256:
            name, _, digest = entry.rpartition(":")
            pairs.append((name or f"key-{digest[:8]}", digest))
        return pairs

    @model_validator(mode="after")
    def _check_dicom_tls(self) -> Settings:
        _check_tls_pair("SATS_DICOM_TLS_CERT and SATS_DICOM_TLS_KEY", self.dicom_tls_cert, self.dicom_tls_key)
        if self.dicom_tls_ca is not None and self.dicom_tls_cert is None:
            raise ValueError("SATS_DICOM_TLS_CA needs SATS_DICOM_TLS_CERT and SATS_DICOM_TLS_KEY")
        return self

    @field_validator("dicom_allowed_aets", mode="before")
    @classmethod
    def _split_titles(cls, value: object) -> object:
        if isinstance(value, str):
            return [item for item in value.split(",") if item.strip()]
        return value

    @field_validator("dicom_allowed_aets")
    @classmethod
    def _check_titles(cls, value: list[str]) -> list[str]:
        return [check_ae_title(title) for title in value]

    @field_validator("dicom_ae_title")
    @classmethod
    def _check_own_title(cls, value: str) -> str:
        return check_ae_title(value)

    @model_validator(mode="after")
    def _check_timeouts(self) -> Settings:
        if self.visibility_timeout_s <= self.job_time_limit_s:
            raise ValueError(
                f"SATS_VISIBILITY_TIMEOUT_S ({self.visibility_timeout_s}) must exceed SATS_JOB_TIME_LIMIT_S "
                f"({self.job_time_limit_s}), or a running job would be handed to a second worker"
            )
        return self

    @property
    def inputs_dir(self) -> Path:
        return self.data_dir / "inputs"

    @property
    def results_dir(self) -> Path:
        return self.data_dir / "results"

    @property
    def incoming_dir(self) -> Path:
        return self.data_dir / "incoming"

    @property
    def dicom_pending_dir(self) -> Path:
        """Instances received over DICOM, one folder per series until the series is complete."""
        return self.data_dir / "dicom-pending"

    @property
    def dicom_late_dir(self) -> Path:
        """Instances that arrived for a series whose job had already started, one folder per job."""
        return self.data_dir / "dicom-late"


def key_digest(key: str) -> str:
    """Return the SHA-256 hex digest under which an API key is configured."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the settings read from the environment (once per process)."""
    return Settings()
