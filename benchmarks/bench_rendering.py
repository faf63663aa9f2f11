"""Throughput of MultiviewRenderer's backends on a 7,000-triangle face-like scan (3 views at 224x224), on an idle
and on a busy machine (competing processes spinning on every core), and on a GPU when there is one.

Usage: python -m benchmarks.bench_rendering --output FILE.json [--quick] [--gpu-batch-sizes 8,64,256]
"""

from __future__ import annotations

import contextlib
import functools
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
from modeling_facet.rendering import DEFAULT_FACE_SIZE, MultiviewRenderer


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


def torch_scans_per_s(repeats: int, num_threads=1) -> float:
    """Scans/s of the CPU torch backend on the benchmark scan (median of `repeats`), rendering with `num_threads`
    torch threads (the renderer's default, 1) or, for None, this process's thread settings."""
    renderer, scan = MultiviewRenderer(backend="torch", device="cpu", num_threads=num_threads), face_like_scan()
    return 1000.0 / median_ms(lambda: renderer.render(scan), repeats)


def _torch_scans_per_s_without_wait_policy(repeats: int, num_threads=1) -> float:
    """`torch_scans_per_s` in a fresh process whose OMP_WAIT_POLICY is unset, as in a library user's own program:
    OpenMP then spins briefly between parallel regions instead of sleeping (the policy is read when torch starts)."""
    environment = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    code = f"from benchmarks.bench_rendering import torch_scans_per_s; print(torch_scans_per_s({repeats}, {num_threads}))"
    result = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parents[1])  # fmt: skip
    return float(result.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def competing_processes(count: int):
    """`count` processes spinning on the CPU while the block runs (each wants a whole core), stopped after it."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        time.sleep(1.0)  # let them start before anything is timed
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def cpu_rows(quick: bool, busy: bool = False) -> dict:
    """The CPU torch backend with its default thread policy (1 torch thread while it renders) against the process's
    torch threads, side by side in this process and in fresh processes with OMP_WAIT_POLICY unset; `busy`: while
    one competing process per core spins. The load average is recorded before and after."""
    repeats = 5 if quick else 20
    scan = face_like_scan()
    renderers = {"torch": MultiviewRenderer(device="cpu"),
                 "torch_process_threads": MultiviewRenderer(device="cpu", num_threads=None)}  # fmt: skip
    rows = {"load_average_before": os.getloadavg()[0], "competing_processes": os.cpu_count() if busy else 0}
    with competing_processes(rows["competing_processes"]):
        seconds = _median_seconds({name: functools.partial(r.render, scan) for name, r in renderers.items()}, repeats)
        for name, (wall, cpu) in seconds.items():
            rows[f"{name}_scans_per_s"], rows[f"{name}_cpu_ms_per_scan"] = 1 / wall, 1000.0 * cpu
        for name, threads in (("torch", 1), ("torch_process_threads", None)):
            rows[f"{name}_wait_policy_unset_scans_per_s"] = _torch_scans_per_s_without_wait_policy(repeats, threads)
        rows["load_average_after"] = os.getloadavg()[0]
    rows["torch_over_process_threads"] = rows["torch_scans_per_s"] / rows["torch_process_threads_scans_per_s"]
    rows["torch_over_process_threads_wait_policy_unset"] = (
        rows["torch_wait_policy_unset_scans_per_s"] / rows["torch_process_threads_wait_policy_unset_scans_per_s"]
    )
    return rows


def gpu_rows(quick: bool, batch_sizes=(8, 64, 256)) -> dict:
    """Batched rendering of pre-loaded scans on the GPU (normalisation included, as `render_batch` does it), with
    the rasterizer that "auto" picks there and with the vectorised one, and the CPU-side normalisation alone."""
    from modeling_facet.rendering import _prepare

    repeats = 3 if quick else 10
    scans = [face_like_scan(seed=seed) for seed in range(max(batch_sizes))]
    rows = {"cuda_device": torch.cuda.get_device_name(), "cuda_rasterizer": resolve_method("auto", "cuda"),
            "cuda_batch_sizes": list(batch_sizes)}  # fmt: skip
    for rasterizer in ("auto", "vectorized"):
        renderer = MultiviewRenderer(device="cuda", rasterizer=rasterizer)
        for size in batch_sizes:
            batch = scans[:size]
            seconds = median_ms(lambda: renderer.render_batch(batch), repeats) / 1000.0  # returns host arrays: synced
            rows[f"cuda_{rasterizer}_batch_{size}_scans_per_s"] = size / seconds
    size = max(batch_sizes)
    prepare_ms = median_ms(lambda: [_prepare(scan, DEFAULT_FACE_SIZE, False) for scan in scans[:size]], repeats)
    rows["cpu_prepare_ms_per_scan"] = prepare_ms / size
    best = max(batch_sizes, key=lambda size: rows[f"cuda_auto_batch_{size}_scans_per_s"])
    rows["cuda_batched_scans_per_s"], rows["cuda_best_batch_size"] = rows[f"cuda_auto_batch_{best}_scans_per_s"], best
    return rows


def run(quick: bool, gpu_batch_sizes: str = "8,64,256", skip_busy: bool = False) -> dict:
    """Scans/s of each backend on one scan, side by side, the torch backend batched, and torch/pyrender ratios;
    the CPU thread policies on the idle and on a busy machine (:func:`cpu_rows`); the GPU (:func:`gpu_rows`).

    The CPU torch backend renders with one torch thread by default (MultiviewRenderer's num_threads); it is also
    timed with the process's threads: on a machine whose cores are busy with other work, OpenMP's waiting threads
    make them far slower, spinning (OMP_WAIT_POLICY unset) or woken for every parallel operation (PASSIVE, set by
    `python -m benchmarks` and `facet-vlm`). Both are timed in fresh processes with the policy unset too, as in a
    library user's program. Process CPU time per scan (all threads) is recorded as a measure of work that depends
    less on the machine's load. On the CPU the torch backend rasterizes with the compiled kernel; its vectorised
    rasterizer is timed with one thread.
    """
    repeats = 5 if quick else 20
    batch_size = 8
    scan = face_like_scan()
    batch = [face_like_scan(seed=seed) for seed in range(batch_size)]
    torch_renderer = MultiviewRenderer(backend="torch", device="cpu")
    vectorized_renderer = MultiviewRenderer(backend="torch", device="cpu", rasterizer="vectorized")
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
        "torch_num_threads": torch_renderer.num_threads,
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
    results["cpu_threads"] = {"idle": cpu_rows(quick)}
    if not skip_busy:
        results["cpu_threads"]["busy"] = cpu_rows(quick, busy=True)
    if torch.cuda.is_available():
        results.update(gpu_rows(quick, tuple(int(size) for size in gpu_batch_sizes.split(","))))
    return results


def _add_arguments(parser) -> None:
    parser.add_argument("--gpu-batch-sizes", default="8,64,256", help="scans per render_batch call on a GPU")
    parser.add_argument("--skip-busy", action="store_true", help="leave out the runs beside competing processes")


def main():
    benchmark_main(run, __doc__, quick_help="fewer repetitions", add_arguments=_add_arguments)


if __name__ == "__main__":
    main()
