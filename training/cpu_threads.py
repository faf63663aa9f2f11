"""torch's thread count for the `facet-vlm` command line's CPU work: the cores that other processes leave idle.

With more threads than idle cores, torch's OpenMP threads wait for each other at every operation, spinning or
sleeping (OMP_WAIT_POLICY, which the `facet-vlm` command sets to PASSIVE in training/cli.py): on this project's 2-core
machine, busy with other jobs (load average 5-6), small-preset training steps ran at 24-27 samples/s with 2 threads
against 28-32 with one, and the renderer's tensor operations far slower still (benchmarks/bench_rendering.py,
`cpu_threads`; benchmarks/results/rendering_busy.json).
"""

from __future__ import annotations

import logging
import os


logger = logging.getLogger(__name__)


def idle_cores(cores: int | None = None, load: float | None = None) -> int:
    """The cores not taken by other work: the core count less the 1-minute load average, rounded, at least 1."""
    cores = (os.cpu_count() or 1) if cores is None else cores
    load = os.getloadavg()[0] if load is None else load
    return max(1, min(cores, int(cores - load + 0.5)))


def use_idle_cores() -> int:
    """Lowers torch's intra-op threads to [`idle_cores`] (never raises them: a caller's smaller setting stays);
    returns the thread count in use."""
    import torch

    threads = torch.get_num_threads()
    wanted = min(threads, idle_cores())
    if wanted < threads:
        logger.info("Using %d of %d torch threads: the other cores are busy (load average %.1f)", wanted, threads,
                    os.getloadavg()[0])  # fmt: skip
        torch.set_num_threads(wanted)
    return wanted
