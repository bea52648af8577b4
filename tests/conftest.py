"""Shared fixtures: paths to the real data in ../shared/data and small synthetic datasets."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import SimpleITK as sitk

#: Redis database of the service tests, kept apart from anything else on the server.
SERVICE_REDIS_URL = "redis://127.0.0.1:6379/15"

#: API key of the service tests (its digest is configured below, before any import of the app).
TEST_API_KEY = "test-key-0123456789abcdef"

os.environ["SATS_REDIS_URL"] = SERVICE_REDIS_URL
os.environ["SATS_API_KEY_SHA256"] = "tests:" + hashlib.sha256(TEST_API_KEY.encode()).hexdigest()
# The service tests poll job states ten times a second, more than a client's default limit;
# tests/app/test_gateway.py checks the limit with a small one.
os.environ["SATS_RATE_LIMIT_PER_MINUTE"] = "0"

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_path(*parts: str) -> Path:
    """Return a path under ../shared/data, skipping the test when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not available: {path}")
    return path


@pytest.fixture(scope="session")
def pycerr_ct() -> sitk.Image:
    """The real 90-slice head-and-neck planning CT, read with SimpleITK (HU, float32)."""
    folder = shared_path("hn-ct-pycerr")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return sitk.Cast(reader.Execute(), sitk.sitkFloat32)


@pytest.fixture
def store():
    """The job store on the test Redis database, emptied around each test."""
    import redis

    from app.store import JobStore

    client = redis.Redis.from_url(SERVICE_REDIS_URL, decode_responses=True)
    client.flushdb()
    yield JobStore(client)
    client.flushdb()
