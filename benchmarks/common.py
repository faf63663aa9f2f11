"""Helpers shared by the benchmark scripts: the machine description, timing statistics, JSON output and the
``--output FILE.json [--quick]`` command line every ``benchmarks/bench_*.py`` script has."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or the platform string where there is none)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list:
    """The 1, 5 and 15 minute load averages (other work on a shared machine skews every timing)."""
    return [round(value, 2) for value in os.getloadavg()]


def git_state() -> dict:
    """The checkout's commit and its tracked files with uncommitted changes (results may depend on them)."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                capture_output=True, text=True, check=True)  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return {"git_commit": None}
    return {"git_commit": commit.stdout.strip(), "uncommitted_changes": [line[3:] for line in status.stdout.splitlines()]}


# The code a benchmark process runs is the code of the checkout when it started (this module is imported first):
# a long study records that, not whatever was committed while it ran.
GIT_STATE_AT_START = git_state()


def environment() -> dict:
    """Where and how a result was measured: CPU, cores, load, versions, the git state when the process started, the
    command and the time."""
    import torch

    info = {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_average_1_5_15min": load_average(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "command": " ".join(["python", *sys.orig_argv[1:]]),
        "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **GIT_STATE_AT_START,
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name()
    return info


def median_ms(function, repeats: int) -> float:
    """Median wall time of ``function()`` in milliseconds, after one warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def latency_stats(function, calls: int) -> dict:
    """Median and 95th percentile wall milliseconds and the median process CPU milliseconds (all threads) of
    ``calls`` calls of ``function()`` (warm up before calling this)."""
    wall, cpu = [], []
    for _ in range(calls):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        function()
        wall.append(time.perf_counter() - start_wall)
        cpu.append(time.process_time() - start_cpu)
    wall_ms, cpu_ms = np.array(wall) * 1e3, np.array(cpu) * 1e3
    return {
        "median_ms": round(float(np.median(wall_ms)), 2),
        "p95_ms": round(float(np.percentile(wall_ms, 95)), 2),
        "cpu_median_ms": round(float(np.median(cpu_ms)), 2),
    }


def write_json(results: dict, path, echo: bool = True) -> Path:
    """Write ``results`` plus an ``environment`` block (see [`environment`]) as indented JSON; print it if ``echo``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({**results, "environment": environment()}, indent=2)
    path.write_text(text + "\n")
    if echo:
        print(text)
    return path


def benchmark_main(run, description: str, quick_help: str = "fewer repeats", add_arguments=None, argv=None) -> dict:
    """The command line of a benchmark script: ``--output FILE.json [--quick]`` plus the flags ``add_arguments(parser)``
    adds; calls ``run(quick=..., **flags)`` (argument names are the flags' ``dest``) and writes its result."""
    parser = argparse.ArgumentParser(description=description.strip().splitlines()[0])
    parser.add_argument("--output", required=True, help="JSON file to write")
    parser.add_argument("--quick", action="store_true", help=quick_help)
    if add_arguments is not None:
        add_arguments(parser)
    arguments = vars(parser.parse_args(argv))
    output = arguments.pop("output")
    results = run(**arguments)
    write_json(results, output)
    return results
