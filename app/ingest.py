"""Turn received DICOM files into jobs: one job per CT series, created once per exact series.

The same code serves STOW-RS, the plain upload and (later) the DICOM listener. Files are
moved into the job's input folder before the job record exists, so a queued job always
has its inputs; a crash in between leaves only an input folder without a job, which the
retention sweep removes.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from app.dicomweb import read_header
from app.settings import Settings
from app.store import Job, JobStore, new_job_id, series_key
from worker.celery_app import send_job

logger = logging.getLogger(__name__)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"

#: DICOM failure reasons used in store responses (PS3.18 table I.2-2).
FAILURE_CANNOT_UNDERSTAND = 0xC000
FAILURE_SOP_CLASS_NOT_SUPPORTED = 0x0122
FAILURE_PROCESSING = 0x0110


@dataclass
class StoredInstance:
    """One accepted instance."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str


@dataclass
class FailedInstance:
    """One rejected part or file, with the DICOM failure reason and a plain message."""

    sop_class_uid: str | None
    sop_instance_uid: str | None
    reason: int
    message: str


@dataclass
class IngestResult:
    """Outcome of one request: instances kept, instances rejected, jobs created or found."""

    stored: list[StoredInstance] = field(default_factory=list)
    failed: list[FailedInstance] = field(default_factory=list)
    jobs: list[tuple[Job, bool]] = field(default_factory=list)


def _move_all(paths: list[Path], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index, path in enumerate(paths):
        os.replace(path, folder / f"{index:05d}.dcm")


def ingest_files(
    paths: list[Path],
    store: JobStore,
    settings: Settings,
    source: str,
    rerun: bool = False,
    calling_aet: str = "",
) -> IngestResult:
    """Sort received files into CT series, create or find one job per series and queue new ones.

    Parameters
    ----------
    paths
        Received files, in a request-private folder under the incoming folder. Files of
        jobs are moved to ``inputs/{job}``; the caller deletes whatever is left.
    store
        The job store.
    source
        ``stow-rs``, ``upload`` or ``dicom``, recorded in the job.
    rerun
        Run a series again even if a job for exactly these instances exists.
    calling_aet
        Calling AE title of the sender, for series received over DICOM.

    Notes
    -----
    Only CT Image Storage instances are kept. Other objects (for example an RT Plan sent
    with the study) are listed as failed with reason 0x0122 (SOP class not supported),
    so the sender learns that they were not used.
    """
    result = IngestResult()
    by_series: dict[str, list[tuple[Path, StoredInstance]]] = defaultdict(list)
    for path in paths:
        header = read_header(path)
        if header is None:
            result.failed.append(
                FailedInstance(None, None, FAILURE_CANNOT_UNDERSTAND, f"part {path.name} is not a DICOM instance")
            )
            continue
        sop_class = str(header.SOPClassUID)
        sop_instance = str(header.SOPInstanceUID)
        study = str(header.get("StudyInstanceUID", ""))
        series = str(header.get("SeriesInstanceUID", ""))
        if sop_class != CT_IMAGE_STORAGE:
            result.failed.append(
                FailedInstance(
                    sop_class, sop_instance, FAILURE_SOP_CLASS_NOT_SUPPORTED, "only CT Image Storage is accepted"
                )
            )
            continue
        if not study or not series:
            result.failed.append(
                FailedInstance(
                    sop_class, sop_instance, FAILURE_PROCESSING, "StudyInstanceUID or SeriesInstanceUID is missing"
                )
            )
            continue
        by_series[series].append((path, StoredInstance(sop_class, sop_instance, study, series)))

    for series_uid, members in by_series.items():
        instances = [instance for _, instance in members]
        job_id = new_job_id()
        input_folder = settings.inputs_dir / job_id
        _move_all([path for path, _ in members], input_folder)
        job = Job(
            id=job_id,
            study_instance_uid=instances[0].study_instance_uid,
            series_instance_uid=series_uid,
            instances=len(instances),
            source=source,
            calling_aet=calling_aet,
        )
        job, created = store.create(job, dedup_key=series_key(series_uid, (i.sop_instance_uid for i in instances)))
        if not created:
            shutil.rmtree(input_folder, ignore_errors=True)  # the existing job has these instances
            if rerun and store.requeue_for_rerun(job.id) is not None:
                send_job(store, job.id, attempt=job.attempts)
                logger.info("job %s requeued for a re-run of series %s", job.id, series_uid)
                job = store.get(job.id) or job
            else:
                logger.info("series %s already has job %s (%s)", series_uid, job.id, job.state)
        else:
            send_job(store, job.id)
            logger.info("job %s queued for series %s (%d instances, %s)", job.id, series_uid, len(instances), source)
        result.stored.extend(instances)
        result.jobs.append((job, created))
    return result
