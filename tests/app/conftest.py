"""Fixtures of the gateway tests: the job store on the test Redis database, emptied around each test."""

from __future__ import annotations

import pytest
import redis

from app.store import JobStore
from tests.conftest import SERVICE_REDIS_URL


@pytest.fixture
def store():
    client = redis.Redis.from_url(SERVICE_REDIS_URL, decode_responses=True)
    client.flushdb()
    yield JobStore(client)
    client.flushdb()
