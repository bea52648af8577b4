"""The service benchmark: real gateway, one real Celery worker and Redis database 14."""

from __future__ import annotations

import pytest
import redis

from worker.benchmarks.service import run_service_benchmark

BENCH_REDIS_URL = "redis://127.0.0.1:6379/14"


def _require_redis() -> redis.Redis:
    client = redis.Redis.from_url(BENCH_REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as error:
        pytest.skip(f"Redis at {BENCH_REDIS_URL} is not reachable: {error}")
    return client


@pytest.mark.slow
def test_service_benchmark_three_studies(tmp_path):
    client = _require_redis()

    result = run_service_benchmark(studies=3, workers=1, work_dir=tmp_path, redis_url=BENCH_REDIS_URL, timeout_s=120)

    assert result["lost"] == 0, result["failures"]
    assert result["studies"] == 3
    assert result["workers"] == 1
    assert result["failed"] == 0
    assert result["wall_s"] > 0
    assert result["studies_per_hour"] > 0
    assert result["p95_queue_wait_s"] >= 0
    assert result["p95_queue_wait_s"] >= result["median_queue_wait_s"]
    assert result["stage_median_s"]["infer"] > 0
    assert client.dbsize() == 0


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"redis_url": "redis://127.0.0.1:6379"}, "dedicated database"),
        ({"redis_url": "redis://127.0.0.1:6379/0"}, "dedicated database"),
        ({"studies": 0}, "studies must be between"),
        ({"workers": 0}, "workers must be between"),
        ({"timeout_s": 0}, "timeout_s must be positive"),
    ],
)
def test_service_benchmark_rejects_arguments(tmp_path, arguments, message):
    with pytest.raises(ValueError, match=message):
        run_service_benchmark(work_dir=tmp_path, **arguments)
