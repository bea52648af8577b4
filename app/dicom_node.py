"""DICOM listener: a Storage SCP for CT Image Storage, with Verification (C-ECHO).

Run it with ``python -m app.dicom_node``. It accepts associations only from the calling
AE titles in ``SATS_DICOM_ALLOWED_AETS`` and only the transfer syntaxes that the
installed pydicom decoders read, so a series it accepts can be segmented.

A sender may use one association per image or split a series over several associations,
so a series is complete when no new instance of it has arrived for
``SATS_DICOM_QUIET_PERIOD_S`` seconds. Then exactly one job is queued for it (see
:mod:`app.ingest`). Received instances are written atomically to
``dicom-pending/{SeriesInstanceUID}/`` and the quiet period is measured from the files'
modification times, so a listener restart loses nothing and seals what it finds.

An instance that arrives for a series whose job is queued or running, and that is not
one of the job's instances, is a late instance. It is kept apart in
``dicom-late/{job}/``, counted on the job and logged, never merged into the running job.
An instance that arrives after the job finished starts a new series batch.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from pydicom.pixels import get_decoder
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from app.dicom_tls import server_context
from app.ingest import ingest_files
from app.settings import Settings, get_settings, require_tls_files
from app.store import FINAL_STATES, JobStore

logger = logging.getLogger(__name__)

#: Transfer syntaxes offered when pydicom can decode them (uncompressed ones always can).
CANDIDATE_TRANSFER_SYNTAXES = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGExtended12Bit,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
)

#: C-STORE status codes (PS3.4 annex B.2.3).
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000

#: Seconds between checks for complete series.
SEAL_INTERVAL_S = 1.0


def decodable_transfer_syntaxes() -> list[UID]:
    """Return the candidate transfer syntaxes for which pydicom has a working decoder."""
    found = []
    for syntax in CANDIDATE_TRANSFER_SYNTAXES:
        if not syntax.is_compressed:
            found.append(syntax)
            continue
        try:
            if get_decoder(syntax).is_available:
                found.append(syntax)
        except NotImplementedError:
            continue
    return found


class DicomNode:
    """The Storage SCP, its series sealer and the job store they share."""

    def __init__(self, settings: Settings, store: JobStore) -> None:
        if not settings.dicom_allowed_aets:
            raise RuntimeError(
                "no calling AE title is allowed: set SATS_DICOM_ALLOWED_AETS to the comma-separated AE titles "
                "of the PACS and scanners that may send"
            )
        self.settings = settings
        self.store = store
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.syntaxes = decodable_transfer_syntaxes()
        self.ae = AE(ae_title=settings.dicom_ae_title)
        self.ae.require_calling_aet = list(settings.dicom_allowed_aets)
        self.ae.require_called_aet = True
        self.ae.add_supported_context(CTImageStorage, self.syntaxes)
        self.ae.add_supported_context(Verification)
        self.server: Any = None
        self.sealer: threading.Thread | None = None

    # Receiving ----------------------------------------------------------------------------
    def _series_job(self, series_uid: str) -> str | None:
        value = self.store.redis.get(f"sats:dicom-series:{series_uid}")
        return str(value) if value else None

    def handle_store(self, event: Any) -> int:
        """Write one received instance (C-STORE request) and return the C-STORE status."""
        calling = str(event.assoc.requestor.ae_title).strip()
        try:
            dataset = event.dataset
            series_uid = str(dataset.SeriesInstanceUID)
            sop_uid = str(dataset.SOPInstanceUID)
        except (AttributeError, ValueError, KeyError) as error:
            logger.warning("C-STORE from %s rejected: data set cannot be read (%s)", calling, error)
            return STATUS_CANNOT_UNDERSTAND
        data = event.encoded_dataset()
        with self.lock:
            folder = self._folder_for(series_uid, sop_uid)
            if folder is None:
                return STATUS_SUCCESS  # a copy of an instance the job already has
            try:
                _write_atomically(folder, f"{sop_uid}.dcm", data)
                if folder.parent == self.settings.dicom_pending_dir:
                    _write_atomically(folder, ".calling-aet", calling.encode())
            except OSError as error:
                logger.error("C-STORE of %s from %s failed: cannot write (%s)", sop_uid, calling, error)
                return STATUS_OUT_OF_RESOURCES
        return STATUS_SUCCESS

    def _folder_for(self, series_uid: str, sop_uid: str) -> Path | None:
        """Return where an instance goes: the pending series, the late folder, or None (a known copy)."""
        job_id = self._series_job(series_uid)
        job = self.store.get(job_id) if job_id else None
        if job is not None and job.state not in FINAL_STATES:
            if self.store.redis.sismember(f"sats:job-instances:{job.id}", sop_uid):
                return None
            self.store.record_late_instance(job.id, sop_uid)
            logger.warning(
                "late instance %s of series %s arrived after job %s started; kept apart, not merged",
                sop_uid,
                series_uid,
                job.id,
            )
            return self.settings.dicom_late_dir / job.id
        return self.settings.dicom_pending_dir / series_uid

    # Sealing ------------------------------------------------------------------------------
    def seal_ready(self, now: float | None = None) -> int:
        """Queue a job for every pending series quiet for the quiet period; return how many."""
        now = time.time() if now is None else now
        root = self.settings.dicom_pending_dir
        sealed = 0
        if not root.is_dir():
            return 0
        for folder in sorted(root.iterdir()):
            with self.lock:
                files = sorted(folder.glob("*.dcm"))
                if not files:
                    continue
                newest = max(path.stat().st_mtime for path in files)
                if now - newest < self.settings.dicom_quiet_period_s:
                    continue
                calling_file = folder / ".calling-aet"
                calling = calling_file.read_text().strip() if calling_file.exists() else ""
                result = ingest_files(files, self.store, self.settings, source="dicom", calling_aet=calling)
                for job, _created in result.jobs:
                    uids = [item.sop_instance_uid for item in result.stored if item.series_instance_uid == folder.name]
                    self.store.remember_dicom_series(job.id, job.series_instance_uid, uids)
                for failure in result.failed:
                    logger.warning(
                        "instance %s of series %s not used: %s", failure.sop_instance_uid, folder.name, failure.message
                    )
                for path in folder.iterdir():
                    path.unlink()
                folder.rmdir()
                sealed += 1
        return sealed

    def _seal_loop(self) -> None:
        while not self.stop_event.wait(SEAL_INTERVAL_S):
            try:
                self.seal_ready()
            except Exception:  # noqa: BLE001 - keep sealing; the next pass retries
                logger.exception("sealing pending series failed; retrying in %.0f s", SEAL_INTERVAL_S)

    # Lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        for folder in (self.settings.dicom_pending_dir, self.settings.dicom_late_dir, self.settings.inputs_dir):
            folder.mkdir(parents=True, exist_ok=True)
        handlers: list[Any] = [(evt.EVT_C_STORE, self.handle_store)]
        address = (self.settings.dicom_bind_address, self.settings.dicom_port)
        tls, transport = None, "plain TCP"
        if self.settings.dicom_tls_cert is not None and self.settings.dicom_tls_key is not None:
            require_tls_files(
                "SATS_DICOM_TLS_CERT, SATS_DICOM_TLS_KEY, SATS_DICOM_TLS_CA",
                self.settings.dicom_tls_cert,
                self.settings.dicom_tls_key,
                self.settings.dicom_tls_ca,
            )
            tls = server_context(self.settings.dicom_tls_cert, self.settings.dicom_tls_key, self.settings.dicom_tls_ca)
            transport = "TLS, client certificates required" if self.settings.dicom_tls_ca else "TLS"
        self.server = self.ae.start_server(address, block=False, evt_handlers=handlers, ssl_context=tls)
        self.sealer = threading.Thread(target=self._seal_loop, name="series-sealer", daemon=True)
        self.sealer.start()
        logger.info(
            "DICOM listener %s on %s:%d (%s); calling AE titles allowed: %s; transfer syntaxes: %s",
            self.settings.dicom_ae_title,
            *address,
            transport,
            ", ".join(self.settings.dicom_allowed_aets),
            ", ".join(syntax.name for syntax in self.syntaxes),
        )

    def stop(self) -> None:
        self.stop_event.set()
        if self.server is not None:
            self.server.shutdown()
        if self.sealer is not None:
            self.sealer.join(timeout=10)
        logger.info("DICOM listener stopped")


def _write_atomically(folder: Path, name: str, data: bytes) -> None:
    """Write ``folder/name`` through a temporary file, so readers never see part of it."""
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / f".{name}.{threading.get_ident()}.tmp"
    temporary.write_bytes(data)
    os.replace(temporary, folder / name)


def main() -> None:
    """Run the listener until SIGTERM or SIGINT."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    settings = get_settings()
    node = DicomNode(settings, JobStore.from_url(settings.redis_url))
    node.start()
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    stopped.wait()
    node.stop()


if __name__ == "__main__":
    main()
