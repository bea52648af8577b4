"""TLS contexts for DICOM associations of the listener and of delivery: TLS 1.2 or newer.

The listener uses TLS when ``SATS_DICOM_TLS_CERT`` and ``SATS_DICOM_TLS_KEY`` are set, and
then accepts only TLS connections. With ``SATS_DICOM_TLS_CA`` it also requires a client
certificate signed by that CA (mutual TLS). A destination with ``"tls": true`` is reached
over TLS, and its certificate is checked against ``tls_ca`` (default: the system's CAs) and
its host name. ``tls_cert`` and ``tls_key`` present a client certificate.
"""

from __future__ import annotations

import ssl
from pathlib import Path


def server_context(cert: Path, key: Path, client_ca: Path | None) -> ssl.SSLContext:
    """Return the listener's TLS context: TLS 1.2 or newer, client certificates required with ``client_ca``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=cert, keyfile=key)
    if client_ca is not None:
        context.load_verify_locations(cafile=client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(ca: Path | None, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    """Return a destination's TLS context: the peer's certificate and host name are always checked."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        context.load_cert_chain(certfile=cert, keyfile=key)
    return context
