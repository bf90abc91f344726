"""The bare forward timing shared by the GPU benchmarks: CUDA events around each call."""

from __future__ import annotations

import time
from collections.abc import Callable


def time_forwards(call: Callable[[], object], reps: int, warmup: int = 2) -> tuple[list[float], float]:
    """Seconds of ``reps`` calls of ``call`` timed with CUDA events, after a first call (its wall
    seconds are returned too: compilation, lazy set-up) and ``warmup`` more."""
    import torch

    first0 = time.perf_counter()
    call()
    torch.cuda.synchronize()
    first = time.perf_counter() - first0
    for _ in range(warmup):
        call()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return times, first
