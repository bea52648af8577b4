"""``sats`` subcommands for operating the service."""

from __future__ import annotations

import argparse
import secrets


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register the service subcommands on ``subparsers``."""
    parser = subparsers.add_parser(
        "api-key",
        help="print a new random API key and the SHA-256 digest to configure",
        description="Print a new random API key (32 random bytes, URL-safe base64) and its SHA-256 hex digest. "
        "Give the key to the client; add the digest to SATS_API_KEY_SHA256 (comma-separated) of the gateway. "
        "The gateway stores only digests, so a lost key cannot be recovered, only replaced.",
    )
    parser.set_defaults(handler=_run_api_key)


def _run_api_key(args: argparse.Namespace) -> int:
    from app.settings import key_digest

    key = secrets.token_urlsafe(32)
    print(f"API key (give to the client):      {key}")
    print(f"SHA-256 (add to SATS_API_KEY_SHA256): {key_digest(key)}")
    return 0
