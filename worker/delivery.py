"""Delivery of a job's RTSTRUCT and SEG to a destination: DICOM C-STORE or DICOMweb STOW-RS.

Each instance keeps its SOP Instance UID, so delivering a job twice stores the same
objects again rather than new copies. Outcomes are per destination and SOP class:

``delivered``
    The destination stored the instance (C-STORE success or warning status, or STOW-RS
    listed it as stored).
``rejected_sop_class``
    The destination does not accept the SOP class (no accepted presentation context, or
    STOW-RS failure reason 0x0122). Other instances are still sent.
``failed``
    The destination refused the instance with another status, or rejected the association
    permanently (for example because it does not know our AE title); not retried, because
    only a change of configuration can help. ``POST /v1/jobs/{id}/deliver`` sends again.

Faults where a retry may succeed (connection refused or reset, association rejected
as transient or aborted, time-out, HTTP 5xx, 429) raise :class:`TransientDeliveryError`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association

from app.dicom_tls import client_context
from app.dicomweb import multipart_related_body
from app.settings import Destination, require_tls_files
from model.errors import SATsError

logger = logging.getLogger(__name__)

#: C-STORE statuses that mean "stored" (PS3.4 annex B.2.3: success and warnings).
STORED_STATUSES = {0x0000, 0xB000, 0xB006, 0xB007}

#: STOW-RS failure reason for a SOP class the destination does not support.
SOP_CLASS_NOT_SUPPORTED = 0x0122


class TransientDeliveryError(SATsError):
    """A delivery fault that a later attempt may overcome."""

    code = "delivery.transient"


@dataclass
class DeliveryOutcome:
    """Delivery outcome of one instance at one destination."""

    destination: str
    sop_class: str
    sop_instance_uid: str
    status: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _headers(paths: Sequence[Path]) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(path, stop_before_pixels=False) for path in paths]


def deliver_dicom(destination: Destination, paths: Sequence[Path], calling_aet: str) -> list[DeliveryOutcome]:
    """Send ``paths`` to a C-STORE SCP in one association and return one outcome per instance.

    Raises
    ------
    TransientDeliveryError
        If the association cannot be established or is aborted.
    """
    datasets = _headers(paths)
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = destination.timeout_s
    for sop_class in sorted({str(d.SOPClassUID) for d in datasets}):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    if destination.host is None or destination.port is None or destination.ae_title is None:
        raise ValueError(f"destination {destination.name!r} of kind dicom needs ae_title, host and port")
    tls_args = None
    if destination.tls:
        files = (destination.tls_ca, destination.tls_cert, destination.tls_key)
        require_tls_files(f"destination {destination.name!r}", *files)
        tls_args = (client_context(*files), destination.host)
    association = ae.associate(destination.host, destination.port, ae_title=destination.ae_title, tls_args=tls_args)
    if not association.is_established and association.rejected_contexts and not association.accepted_contexts:
        # The peer responded but accepted no presentation context, so pynetdicom aborted.
        # The destination does not accept these SOP classes, and retrying cannot help.
        return [_rejected(destination, UID(str(d.SOPClassUID)), str(d.SOPInstanceUID)) for d in datasets]
    if association.is_rejected and _rejected_permanently(association):
        message = f"{destination.name} rejected the association permanently ({_rejection_reason(association)})"
        return [
            DeliveryOutcome(destination.name, UID(str(d.SOPClassUID)).name, str(d.SOPInstanceUID), "failed", message)
            for d in datasets
        ]
    if not association.is_established:
        raise TransientDeliveryError(
            f"association with {destination.name} ({destination.ae_title}@{destination.host}:{destination.port}) "
            "was rejected, aborted or timed out",
            code="delivery.association_failed",
        )
    outcomes = []
    try:
        accepted = {str(context.abstract_syntax) for context in association.accepted_contexts}
        for dataset in datasets:
            sop_class = UID(str(dataset.SOPClassUID))
            sop_uid = str(dataset.SOPInstanceUID)
            if sop_class not in accepted:
                outcomes.append(_rejected(destination, sop_class, sop_uid))
                continue
            status = association.send_c_store(dataset)
            if not status or "Status" not in status:
                raise TransientDeliveryError(
                    f"no C-STORE response from {destination.name} for {sop_uid}", code="delivery.no_response"
                )
            code = int(status.Status)
            result = "delivered" if code in STORED_STATUSES else "failed"
            outcomes.append(DeliveryOutcome(destination.name, sop_class.name, sop_uid, result, f"status 0x{code:04X}"))
    finally:
        if association.is_established:
            association.release()
    return outcomes


def _rejected_permanently(association: Association) -> bool:
    primitive = association.acceptor.primitive
    return primitive is not None and primitive.result == 0x01  # PS3.8 A-ASSOCIATE-RJ result 1


def _rejection_reason(association: Association) -> str:
    """Describe an A-ASSOCIATE-RJ by its source and reason (PS3.8 table 9-21)."""
    primitive = association.acceptor.primitive
    if primitive is None:
        return "no reason given"
    return f"source {primitive.source_str}, reason: {primitive.reason_str}"


def _rejected(destination: Destination, sop_class: UID, sop_instance_uid: str) -> DeliveryOutcome:
    message = f"destination rejected SOP class {sop_class.name} ({sop_class})"
    return DeliveryOutcome(destination.name, sop_class.name, sop_instance_uid, "rejected_sop_class", message)


def deliver_dicomweb(destination: Destination, paths: Sequence[Path]) -> list[DeliveryOutcome]:
    """Send ``paths`` in one STOW-RS request and return one outcome per instance.

    Raises
    ------
    TransientDeliveryError
        On a connection error, a time-out, HTTP 429 or a 5xx status.
    """
    datasets = [pydicom.dcmread(path, stop_before_pixels=True) for path in paths]
    body, content_type = multipart_related_body(paths)
    headers = {"Content-Type": content_type, "Accept": "application/dicom+json"}
    if destination.authorization:
        headers["Authorization"] = destination.authorization
    url = f"{(destination.url or '').rstrip('/')}/studies"
    try:
        response = httpx.post(url, content=b"".join(body), headers=headers, timeout=destination.timeout_s)
    except httpx.HTTPError as error:
        raise TransientDeliveryError(f"STOW-RS to {destination.name} failed: {error}") from error
    if response.status_code == 429 or response.status_code >= 500:
        raise TransientDeliveryError(f"STOW-RS to {destination.name} returned HTTP {response.status_code}")
    failed: dict[str, int] = {}
    if response.status_code in (200, 202, 409) and response.content:
        try:
            for item in response.json().get("00081198", {}).get("Value", []):
                uid = item.get("00081155", {}).get("Value", [""])[0]
                failed[uid] = int(item.get("00081197", {}).get("Value", [0])[0])
        except ValueError:
            logger.warning("STOW-RS response of %s is not DICOM JSON; relying on the HTTP status", destination.name)
    outcomes = []
    for dataset in datasets:
        sop_class = UID(str(dataset.SOPClassUID))
        uid = str(dataset.SOPInstanceUID)
        if response.status_code not in (200, 202, 409):
            outcome = ("failed", f"HTTP {response.status_code}")
        elif uid in failed and failed[uid] == SOP_CLASS_NOT_SUPPORTED:
            outcome = ("rejected_sop_class", f"destination rejected SOP class {sop_class.name} ({sop_class})")
        elif uid in failed or response.status_code == 409:
            outcome = ("failed", f"failure reason 0x{failed.get(uid, 0):04X}")
        else:
            outcome = ("delivered", f"HTTP {response.status_code}")
        outcomes.append(DeliveryOutcome(destination.name, sop_class.name, uid, *outcome))
    return outcomes


def deliver(destination: Destination, paths: Sequence[Path], calling_aet: str) -> list[DeliveryOutcome]:
    """Deliver ``paths`` to ``destination`` by its kind."""
    if destination.kind == "dicom":
        return deliver_dicom(destination, paths, calling_aet)
    return deliver_dicomweb(destination, paths)
