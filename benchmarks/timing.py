"""Shared by the loss benchmarks: median time and peak resident-memory growth of a step."""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable


def time_step(make_step: Callable[[], Callable[[], None]], repeats: int) -> dict[str, float]:
    """Build a step (its inputs counted in memory), warm it up, time ``repeats`` calls.

    Returns {"seconds": median, "peak_mb": growth of the peak RSS over the build and the
    calls}; run each case in a fresh process, since the peak RSS never falls.
    """
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step = make_step()
    step()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": statistics.median(times), "peak_mb": (peak - before) / 1024}
