"""Shared settings and guards of the fuzz tests (Hypothesis, fixed seeds, bounded time and memory).

Each test has a fixed seed and Hypothesis keeps no example database, so the same command on
the same code runs the same examples. NOTE: Hypothesis 6 also draws literals found in the
project modules that are loaded, so ``pytest tests/fuzz/test_fuzz_reader.py`` alone, the whole
``tests/fuzz`` folder and the full suite each run somewhat different examples, and a code
change elsewhere can change them too.

For longer local runs, the environment variable ``SATS_FUZZ_SCALE`` multiplies the number of
examples of every fuzz test (default 1).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, settings

EXAMPLE_SCALE = float(os.environ.get("SATS_FUZZ_SCALE", "1"))

# derandomize=True also turns off the example database (Hypothesis 6), so no run replays or
# stores examples in a .hypothesis folder. The @seed of each test fixes which examples run.
FUZZ_SETTINGS = settings(
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def scaled_examples(count: int) -> int:
    """Return ``count`` multiplied by ``SATS_FUZZ_SCALE``, at least 1."""
    return max(1, round(count * EXAMPLE_SCALE))


class ExampleTimeout(BaseException):  # noqa: N818 (an interrupt, like KeyboardInterrupt)
    """Raised in the code under test when an example passes its time limit.

    It derives from BaseException so that ``except Exception`` handlers in the code under
    test cannot turn it into an ordinary error.
    """


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Interrupt the block with :class:`ExampleTimeout` after ``seconds`` (main thread on Unix only).

    NOTE: a signal is handled only between Python bytecodes of the main thread, so a hang
    inside one C call or in another thread is not interrupted. The elapsed time that
    :func:`guarded_call` measures still fails the example once the call returns.
    """
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise ExampleTimeout(f"the example ran longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class GuardedResult:
    """Result of :func:`guarded_call`: the return value or the exception, with time and memory used.

    Attributes
    ----------
    value
        What the call returned, or None if it raised.
    error
        The exception the call raised, or None.
    elapsed_s
        Wall time of the call in seconds.
    peak_bytes
        Peak of the memory allocated during the call, as traced by :mod:`tracemalloc`
        (every thread, numpy array buffers included).
    """

    value: Any
    error: Exception | None
    elapsed_s: float
    peak_bytes: int


def guarded_call(function: Callable[..., Any], *arguments: Any, limit_s: float) -> GuardedResult:
    """Call ``function(*arguments)`` under :func:`time_limit`, tracing its allocation peak."""
    started_tracing = not tracemalloc.is_tracing()
    if started_tracing:
        tracemalloc.start()
    baseline = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    value: Any = None
    error: Exception | None = None
    start = time.perf_counter()
    try:
        with time_limit(limit_s):
            value = function(*arguments)
    except Exception as caught:  # noqa: BLE001 - the caller classifies every exception
        error = caught
    finally:
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1] - baseline
        if started_tracing:
            tracemalloc.stop()
    return GuardedResult(value, error, elapsed, peak)
