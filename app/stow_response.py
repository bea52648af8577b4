"""The STOW-RS Store Instances response (PS3.18 annex I) in the DICOM JSON model, and its HTTP status."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol


class StoredReference(Protocol):
    """An instance that was stored, as :func:`store_response` reads it."""

    @property
    def sop_class_uid(self) -> str: ...

    @property
    def sop_instance_uid(self) -> str: ...

    @property
    def study_instance_uid(self) -> str: ...

    @property
    def series_instance_uid(self) -> str: ...


class FailedReference(Protocol):
    """An instance or part that was not stored, as :func:`store_response` reads it."""

    @property
    def sop_class_uid(self) -> str | None: ...

    @property
    def sop_instance_uid(self) -> str | None: ...

    @property
    def reason(self) -> int: ...


def store_status(stored_count: int, failed_count: int) -> int:
    """Return the HTTP status of a STOW-RS response from the numbers of stored and failed instances.

    The rule follows PS3.18 table 10.5.3-1 (Store Instances status codes): 200 when every
    instance was stored, 202 when some were stored and others failed, and 409 when none
    was stored although the request was well formed. Requests with bad syntax never get
    here, because :func:`receive_multipart_related` raises for them (400).

    Parameters
    ----------
    stored_count
        Instances stored.
    failed_count
        Instances or parts that were not stored.

    Returns
    -------
    int
        200, 202 or 409.

    Raises
    ------
    ValueError
        If a count is negative or both are 0.
    """
    if stored_count < 0:
        raise ValueError(f"stored_count must be 0 or more, got {stored_count!r}")
    if failed_count < 0:
        raise ValueError(f"failed_count must be 0 or more, got {failed_count!r}")
    if stored_count == 0 and failed_count == 0:
        raise ValueError("stored_count and failed_count are both 0; a request without parts has no store status")

    if failed_count == 0:
        return 200
    if stored_count > 0:
        return 202
    return 409


def _json_attribute(vr: str, value: str | int | None) -> dict[str, Any]:
    """Return one attribute in the DICOM JSON model, without ``Value`` when ``value`` is None."""
    if value is None:
        return {"vr": vr}
    return {"vr": vr, "Value": [value]}


def store_response(
    stored: Sequence[StoredReference],
    failed: Sequence[FailedReference],
    retrieve_url: str | None,
    instance_url: Callable[[str, str, str], str] | None,
) -> dict[str, Any]:
    """Build the Store Instances Response Module (PS3.18 annex I) in the DICOM JSON model.

    Parameters
    ----------
    stored
        Instances stored, each with SOP Class, SOP Instance, Study Instance and Series
        Instance UIDs (``app.ingest.StoredInstance`` fits).
    failed
        Instances or parts not stored, each with the SOP Class and SOP Instance UIDs when
        known and a Failure Reason (``app.ingest.FailedInstance`` fits). PS3.18 table I.2-2
        defines 0xA700 (out of resources), 0xA900 (data set does not match SOP class),
        0xC000 (cannot understand), 0xC122 (transfer syntax not supported), 0x0110
        (processing failure) and 0x0122 (SOP class not supported).
    retrieve_url
        Study URL for the top-level Retrieve URL (0008,1190), or None to send it empty.
    instance_url
        Returns the WADO-RS URL of one instance from its Study Instance, Series Instance
        and SOP Instance UIDs, in that order. None sends each item's Retrieve URL empty.

    Returns
    -------
    dict
        The response body, keyed by 8-digit uppercase hexadecimal tags. Referenced SOP
        Sequence (0008,1199) is present only when something was stored and Failed SOP
        Sequence (0008,1198) only when something failed, as their type 1C conditions require.

    Raises
    ------
    ValueError
        If both sequences are empty, a stored UID is empty, or a failure reason is not
        in 1 to 0xFFFF.
    """
    if not stored and not failed:
        raise ValueError("stored and failed are both empty; a store response needs at least one instance")
    for instance in stored:
        if not instance.sop_class_uid or not instance.sop_instance_uid:
            raise ValueError(f"stored instance {instance!r} lacks a SOP Class UID or SOP Instance UID")
    for failure in failed:
        if not 1 <= failure.reason <= 0xFFFF:
            raise ValueError(f"failure reason {failure.reason!r} of {failure!r} is not a US value from 1 to 0xFFFF")

    response: dict[str, Any] = {"00081190": _json_attribute("UR", retrieve_url)}
    if failed:
        response["00081198"] = {"vr": "SQ", "Value": [_failed_item(failure) for failure in failed]}
    if stored:
        response["00081199"] = {"vr": "SQ", "Value": [_stored_item(instance, instance_url) for instance in stored]}
    return response


def _failed_item(instance: FailedReference) -> dict[str, Any]:
    # NOTE: Referenced SOP Class and Instance UIDs are type 1 in PS3.3 table 10-11, but a
    # part that is not DICOM has neither, so they are sent without a value.
    return {
        "00081150": _json_attribute("UI", instance.sop_class_uid),
        "00081155": _json_attribute("UI", instance.sop_instance_uid),
        "00081197": _json_attribute("US", int(instance.reason)),
    }


def _stored_item(instance: StoredReference, instance_url: Callable[[str, str, str], str] | None) -> dict[str, Any]:
    url = None
    if instance_url is not None:
        url = instance_url(instance.study_instance_uid, instance.series_instance_uid, instance.sop_instance_uid)
    return {
        "00081150": _json_attribute("UI", instance.sop_class_uid),
        "00081155": _json_attribute("UI", instance.sop_instance_uid),
        "00081190": _json_attribute("UR", url),
    }
