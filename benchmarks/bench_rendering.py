"""Throughput of MultiviewRenderer's backends on a 7,000-triangle face-like scan (3 views at 224x224).

Usage: python -m benchmarks.bench_rendering --output FILE.json [--quick]
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import benchmark_main, cpu_model, median_ms
from modeling_facet.mesh_io import FaceScan
from modeling_facet.rasterization import resolve_method
from modeling_facet.rendering import MultiviewRenderer


def face_like_scan(rows: int = 60, cols: int = 61, seed: int = 0) -> FaceScan:
    """A millimetre height field shaped like a face: an ellipsoidal cap with a nose, brows and eye sockets.

    A rows x cols grid gives 2 (rows - 1)(cols - 1) triangles (7,080 for the default 60 x 61), wound counter-clockwise
    seen from +z; ``seed`` adds sub-millimetre scanner noise.
    """
    x, y = np.meshgrid(np.linspace(-75.0, 75.0, cols), np.linspace(-100.0, 100.0, rows))
    cap = 80.0 * np.sqrt(np.clip(1.0 - (x / 90.0) ** 2 - (y / 125.0) ** 2, 0.0, None))
    nose = 22.0 * np.exp(-((x / 11.0) ** 2) - ((y + 5.0) / 22.0) ** 2)
    brows = 6.0 * np.exp(-(((np.abs(x) - 30.0) / 16.0) ** 2) - ((y - 38.0) / 6.0) ** 2)
    sockets = -8.0 * np.exp(-(((np.abs(x) - 30.0) / 12.0) ** 2) - ((y - 22.0) / 9.0) ** 2)
    noise = np.random.default_rng(seed).normal(scale=0.2, size=x.shape)
    vertices = np.stack([x, y, cap + nose + brows + sockets + noise], axis=-1).reshape(-1, 3)
    corner = (np.arange(rows - 1)[:, None] * cols + np.arange(cols - 1)[None, :]).ravel()
    lower = np.stack([corner, corner + 1, corner + cols + 1], axis=1)
    upper = np.stack([corner, corner + cols + 1, corner + cols], axis=1)
    faces = np.concatenate([lower, upper])
    # Rows run from y = -100 upwards, so (corner, corner + 1, corner + cols + 1) is counter-clockwise from +z.
    return FaceScan(vertices=vertices.astype(np.float32), faces=faces.astype(np.int64), source_path="face_like_scan")


def _median_seconds(calls: dict, repeats: int) -> dict:
    """Median (wall, process CPU) seconds of each call after a warm-up; the calls take turns, so load changes hit
    them alike. Process CPU time counts every thread (torch's OpenMP threads, Mesa llvmpipe's render threads)."""
    timings = {name: [] for name in calls}
    for call in calls.values():
        call()
    for _ in range(repeats):
        for name, call in calls.items():
            wall, cpu = time.perf_counter(), time.process_time()
            call()
            timings[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    return {name: tuple(np.median(values, axis=0)) for name, values in timings.items()}


def _single_threaded(call):
    def run_with_one_thread():
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            call()
        finally:
            torch.set_num_threads(threads)

    return run_with_one_thread


def torch_scans_per_s(repeats: int) -> float:
    """Scans/s of the torch backend on the benchmark scan with this process's thread settings (median of `repeats`)."""
    renderer, scan = MultiviewRenderer(backend="torch"), face_like_scan()
    return 1000.0 / median_ms(lambda: renderer.render(scan), repeats)


def _torch_scans_per_s_without_wait_policy(repeats: int) -> float:
    """`torch_scans_per_s` in a fresh process whose OMP_WAIT_POLICY is unset, as in a library user's own program:
    OpenMP then spins briefly between parallel regions instead of sleeping (the policy is read when torch starts)."""
    environment = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    code = f"from benchmarks.bench_rendering import torch_scans_per_s; print(torch_scans_per_s({repeats}))"
    result = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parents[1])  # fmt: skip
    return float(result.stdout.strip().splitlines()[-1])


def run(quick: bool) -> dict:
    """Scans/s of each backend on one scan, side by side, the torch backend batched, and torch/pyrender ratios.

    The torch backend is timed with torch's default intra-op threads and with one thread: on a machine whose cores
    are busy with other work, OpenMP's spinning waits (OMP_WAIT_POLICY unset) can make the default, and everything
    else in the process, far slower; OMP_WAIT_POLICY=PASSIVE (set by `python -m benchmarks` and `facet-vlm`) avoids
    that, at the price of waking the threads for every parallel operation. So the default threads are also timed in a
    fresh process with the policy unset, as in a library user's program. Process CPU time per scan (all threads)
    is recorded too, as a measure of work that depends less on the machine's load. On the CPU the torch backend
    rasterizes with the compiled kernel; its vectorised rasterizer (what runs on a GPU) is timed with one thread.
    """
    repeats = 5 if quick else 20
    batch_size = 8
    scan = face_like_scan()
    batch = [face_like_scan(seed=seed) for seed in range(batch_size)]
    torch_renderer = MultiviewRenderer(backend="torch")
    vectorized_renderer = MultiviewRenderer(backend="torch", rasterizer="vectorized")
    calls = {
        "torch": lambda: torch_renderer.render(scan),
        "torch_1thread": _single_threaded(lambda: torch_renderer.render(scan)),
        "torch_batched": lambda: torch_renderer.render_batch(batch),
        "torch_vectorized_1thread": _single_threaded(lambda: vectorized_renderer.render(scan)),
    }
    results = {
        "scan": {"vertices": len(scan.vertices), "triangles": len(scan.faces)},
        "views": len(torch_renderer.views),
        "image_size": torch_renderer.image_size,
        "channels": list(torch_renderer.channels),
        "torch_rasterizer": resolve_method(torch_renderer.rasterizer, "cpu"),
        "repeats": repeats,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "load_average_before": os.getloadavg()[0],
    }
    try:
        pyrender_renderer = MultiviewRenderer(backend="pyrender")
        pyrender_renderer.render(scan)
        calls["pyrender"] = lambda: pyrender_renderer.render(scan)
    except RuntimeError as error:
        results["pyrender_error"] = str(error)
    seconds = _median_seconds(calls, repeats)
    results["load_average_after"] = os.getloadavg()[0]
    per_scan = {"torch_batched": batch_size}
    for name, (wall, cpu) in seconds.items():
        results[f"{name}_scans_per_s"] = per_scan.get(name, 1) / wall
        results[f"{name}_cpu_ms_per_scan"] = 1000.0 * cpu / per_scan.get(name, 1)
    results["torch_batch_size"] = batch_size
    results["torch_wait_policy_unset_scans_per_s"] = _torch_scans_per_s_without_wait_policy(repeats)
    if "pyrender" in seconds:
        for name in ("torch", "torch_1thread", "torch_batched", "torch_vectorized_1thread", "torch_wait_policy_unset"):
            results[f"{name}_over_pyrender"] = results[f"{name}_scans_per_s"] / results["pyrender_scans_per_s"]
        results["pyrender_cpu_over_torch_1thread_cpu"] = (
            results["pyrender_cpu_ms_per_scan"] / results["torch_1thread_cpu_ms_per_scan"]
        )
    if torch.cuda.is_available():
        cuda_renderer = MultiviewRenderer(backend="torch", device="cuda")

        def cuda_batch():
            cuda_renderer.render_batch(batch)
            torch.cuda.synchronize()

        results["cuda_device"] = torch.cuda.get_device_name()
        results["cuda_batched_scans_per_s"] = batch_size / _median_seconds({"cuda": cuda_batch}, repeats)["cuda"][0]
    return results


def main():
    benchmark_main(run, __doc__, quick_help="fewer repetitions")


if __name__ == "__main__":
    main()
