"""Response models of the HTTP API, with the examples shown in the OpenAPI schema."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.store import Job

_JOB_EXAMPLE: dict[str, Any] = {
    "id": "3f9c2a7e1b4d4c0e9a8b7c6d5e4f3a2b",
    "state": "completed",
    "stage": "write",
    "progress": 1.0,
    "study_instance_uid": "1.2.826.0.1.3680043.8.498.1",
    "series_instance_uid": "1.2.826.0.1.3680043.8.498.2",
    "instances": 90,
    "source": "stow-rs",
    "created_at": 1796428800.0,
    "started_at": 1796428801.2,
    "finished_at": 1796428812.9,
    "attempts": 1,
    "error": None,
    "timings_s": {"load": 0.3, "symmetrize": 2.9, "preprocess": 0.07, "infer": 4.9, "postprocess": 0.2, "write": 1.4},
    "result": {"gtv_volume_cc": 21.4, "empty": False, "laterality": "left", "asymmetry_score": 0.82},
    "links": {
        "self": "/v1/jobs/3f9c2a7e1b4d4c0e9a8b7c6d5e4f3a2b",
        "rtstruct": "/v1/jobs/3f9c2a7e1b4d4c0e9a8b7c6d5e4f3a2b/rtstruct",
        "seg": "/v1/jobs/3f9c2a7e1b4d4c0e9a8b7c6d5e4f3a2b/seg",
        "qa_png": "/v1/jobs/3f9c2a7e1b4d4c0e9a8b7c6d5e4f3a2b/qa.png",
        "report": "/v1/jobs/3f9c2a7e1b4d4c0e9a8b7c6d5e4f3a2b/report",
    },
}


class JobError(BaseModel):
    """Error code and message of a failed job."""

    code: str = Field(description="Stable machine-readable error code, for example series.gantry_tilt.")
    message: str = Field(description="Plain explanation naming the values involved and what to do.")


class JobView(BaseModel):
    """A job as the API shows it."""

    model_config = ConfigDict(json_schema_extra={"examples": [_JOB_EXAMPLE]})

    id: str
    state: str = Field(description="queued, running, completed or failed.")
    stage: str = Field(description="Current or last stage: load, symmetrize, preprocess, infer, postprocess, write.")
    progress: float = Field(description="Fraction of the job done, 0 to 1.")
    study_instance_uid: str
    series_instance_uid: str
    instances: int = Field(description="DICOM instances received for the series.")
    source: str = Field(description="stow-rs, upload or dicom.")
    created_at: float = Field(description="Unix time in seconds.")
    started_at: float | None = Field(description="Unix time in seconds of the last start, if started.")
    finished_at: float | None = Field(description="Unix time in seconds, if finished.")
    attempts: int = Field(description="Times a worker started the job.")
    error: JobError | None = None
    timings_s: dict[str, float] | None = Field(None, description="Seconds per stage of a completed job.")
    result: dict[str, Any] | None = Field(
        None, description="GTV volume (cc), laterality and asymmetry score of a completed job."
    )
    warnings: list[dict[str, Any]] | None = Field(None, description="Warnings of the series reader and the model.")
    late_instances: int = Field(
        0, description="Instances that arrived over DICOM after the job started; kept apart and not used."
    )
    delivery: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Delivery outcome per destination and SOP class: delivered, rejected_sop_class, retrying or "
        "failed, with a message.",
    )
    links: dict[str, str] = Field(description="URLs of this job and of its results.")

    @classmethod
    def from_job(cls, job: Job, delivery: list[dict[str, Any]] | None = None) -> JobView:
        base = f"/v1/jobs/{job.id}"
        links = {"self": base}
        if job.state == "completed":
            links.update(
                rtstruct=f"{base}/rtstruct", seg=f"{base}/seg", qa_png=f"{base}/qa.png", report=f"{base}/report"
            )
        report = job.report or {}
        return cls(
            id=job.id,
            state=job.state,
            stage=job.stage,
            progress=job.progress,
            study_instance_uid=job.study_instance_uid,
            series_instance_uid=job.series_instance_uid,
            instances=job.instances,
            source=job.source,
            created_at=job.created_at,
            started_at=job.started_at or None,
            finished_at=job.finished_at or None,
            attempts=job.attempts,
            error=JobError(code=job.error_code, message=job.error_message) if job.state == "failed" else None,
            timings_s=report.get("timings_s"),
            result=report.get("result"),
            warnings=report.get("warnings"),
            late_instances=job.late_instances,
            delivery=delivery or [],
            links=links,
        )


class JobList(BaseModel):
    """One page of jobs, newest first."""

    jobs: list[JobView]
    total: int = Field(description="Number of jobs in the store.")
    limit: int
    offset: int


class UploadJob(BaseModel):
    """A job created or found for one received series."""

    job: JobView
    created: bool = Field(description="False when the same instances were received before (idempotent upload).")


class UploadFailure(BaseModel):
    """A received file that was not used, and why."""

    sop_class_uid: str | None
    sop_instance_uid: str | None
    reason: int = Field(description="DICOM failure reason, for example 0xC000 (49152) cannot understand.")
    message: str


class UploadResult(BaseModel):
    """Outcome of a plain upload."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"stored": 90, "jobs": [{"job": _JOB_EXAMPLE, "created": True}], "failed": []}]}
    )

    stored: int = Field(description="CT instances accepted.")
    jobs: list[UploadJob]
    failed: list[UploadFailure]


class ErrorBody(BaseModel):
    """Body of every error response."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"error": {"code": "auth.invalid_key", "message": "invalid API key"}}]}
    )

    error: JobError
