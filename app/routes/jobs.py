"""Job routes: plain upload, job status, listing and result files."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, JSONResponse

from app.auth import AUTH_RESPONSES, require_api_key
from app.errors import ApiError
from app.ingest import ingest_files
from app.schemas import ErrorBody, JobList, JobView, UploadFailure, UploadJob, UploadResult
from app.settings import Settings
from app.store import Job, JobStore
from app.uploads import receive_upload

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["jobs"], dependencies=[Depends(require_api_key)], responses=AUTH_RESPONSES)

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "No such job."},
}

#: Result kinds, their file in the job's result folder and their media type.
RESULT_FILES = {
    "rtstruct": ("rtstruct.dcm", "application/dicom"),
    "seg": ("seg.dcm", "application/dicom"),
    "qa.png": ("qa.png", "image/png"),
    "report": ("report.json", "application/json"),
}


def _store(request: Request) -> JobStore:
    return request.app.state.store


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _job_or_404(store: JobStore, job_id: str) -> Job:
    job = store.get(job_id) if job_id.isalnum() else None
    if job is None:
        raise ApiError(f"job {job_id} not found", code="job.not_found")
    return job


@router.post(
    "/studies",
    response_model=UploadResult,
    status_code=201,
    summary="Upload a CT series as files or one zip (multipart/form-data)",
    responses={
        400: {"model": ErrorBody, "description": "Empty upload, no CT series, unsafe or invalid zip."},
        413: {"model": ErrorBody, "description": "More bytes or files than the configured limits."},
    },
)
async def upload_study(
    request: Request,
    rerun: Annotated[bool, Query(description="Run again even if these instances were processed before.")] = False,
) -> JSONResponse:
    """Receive DICOM files (form fields of any name) or a single zip archive of them.

    One job is created per CT series; posting the same instances again returns the
    existing job unless ``rerun`` is set. The request is complete before jobs are queued,
    so a series split over several uploads forms several jobs.
    """
    settings, store = _settings(request), _store(request)
    async with receive_upload(request, settings) as received:
        result = ingest_files(received, store, settings, source="upload", rerun=rerun)
    if not result.jobs:
        raise ApiError(
            "the upload contains no CT Image Storage instance; " + "; ".join(f.message for f in result.failed[:5]),
            code="upload.no_ct_series",
        )
    body = UploadResult(
        stored=len(result.stored),
        jobs=[UploadJob(job=JobView.from_job(job), created=created) for job, created in result.jobs],
        failed=[UploadFailure(**vars(failure)) for failure in result.failed],
    )
    status = 201 if any(created for _, created in result.jobs) else 200
    return JSONResponse(body.model_dump(mode="json"), status_code=status)


@router.get("/jobs", response_model=JobList, summary="List jobs, newest first")
def list_jobs(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=500, description="Jobs per page.")] = 50,
    offset: Annotated[int, Query(ge=0, description="Jobs to skip.")] = 0,
) -> JobList:
    jobs, total = _store(request).list_jobs(limit=limit, offset=offset)
    return JobList(jobs=[JobView.from_job(job) for job in jobs], total=total, limit=limit, offset=offset)


@router.get("/jobs/{job_id}", response_model=JobView, summary="State, progress and results of a job", responses=_ERRORS)
def get_job(request: Request, job_id: str) -> JobView:
    store = _store(request)
    return JobView.from_job(_job_or_404(store, job_id), store.deliveries(job_id))


@router.post(
    "/jobs/{job_id}/deliver",
    response_model=JobView,
    status_code=202,
    summary="Send a completed job's RTSTRUCT and SEG to its destinations again",
    responses={**_ERRORS, 409: {"model": ErrorBody, "description": "The job is not completed."}},
)
def redeliver_job(request: Request, job_id: str) -> JobView:
    """Queue the delivery again. The instances keep their SOP Instance UIDs, so no duplicate appears."""
    from worker.celery_app import queue_deliveries

    store = _store(request)
    job = _job_or_404(store, job_id)
    if job.state != "completed":
        raise ApiError(f"job {job_id} is {job.state}; only a completed job can be delivered", code="result.not_ready")
    queue_deliveries(job_id, job.calling_aet)
    return JobView.from_job(job, store.deliveries(job_id))


@router.post(
    "/jobs/{job_id}/rerun",
    response_model=JobView,
    status_code=202,
    summary="Run a finished job again",
    responses={**_ERRORS, 409: {"model": ErrorBody, "description": "The job is still queued or running."}},
)
def rerun_job(request: Request, job_id: str) -> JobView:
    from worker.celery_app import send_job

    store = _store(request)
    job = _job_or_404(store, job_id)
    requeued = store.requeue_for_rerun(job_id)
    if requeued is None:
        raise ApiError(f"job {job_id} is {job.state}; only a finished job can run again", code="result.not_ready")
    send_job(store, job_id, attempt=requeued.attempts)
    return JobView.from_job(requeued)


def result_path(settings: Settings, job: Job, kind: str) -> Path:
    """Return the file of result ``kind`` of a completed job.

    Raises
    ------
    ApiError
        ``result.not_ready`` if the job is not completed, ``result.not_found`` if the
        kind is unknown or the file is gone (for example deleted by retention).
    """
    if kind not in RESULT_FILES:
        raise ApiError(f"unknown result {kind!r}; choose one of {sorted(RESULT_FILES)}", code="result.not_found")
    if job.state != "completed":
        raise ApiError(f"job {job.id} is {job.state}; results exist once it is completed", code="result.not_ready")
    path = settings.results_dir / job.result_dir / RESULT_FILES[kind][0]
    if not path.is_file():
        raise ApiError(f"result {kind} of job {job.id} is no longer stored", code="result.not_found")
    return path


@router.get(
    "/jobs/{job_id}/{kind}",
    summary="A result file: rtstruct or seg (application/dicom), qa.png (image/png) or report (application/json)",
    responses={
        **_ERRORS,
        200: {
            "content": {"application/dicom": {}, "image/png": {}, "application/json": {}},
            "description": "The file.",
        },
        409: {"model": ErrorBody, "description": "The job is not completed."},
    },
    response_class=FileResponse,
)
def get_result(request: Request, job_id: str, kind: str) -> FileResponse:
    job = _job_or_404(_store(request), job_id)
    path = result_path(_settings(request), job, kind)
    media_type = RESULT_FILES[kind][1]
    filename = f"{job.id}-{RESULT_FILES[kind][0]}"
    return FileResponse(path, media_type=media_type, filename=filename, content_disposition_type="inline")


def report_of(settings: Settings, job: Job) -> dict[str, object]:
    return json.loads(result_path(settings, job, "report").read_text())
