"""Throughput of MultiviewRenderer's backends on a 7,000-triangle face-like scan (3 views at 224x224).

Usage: python -m benchmarks.bench_rendering --output FILE.json [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
import torch

from modeling_facet.mesh_io import FaceScan
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


def _median_seconds(call, repeats: int) -> float:
    call()
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def run(quick: bool) -> dict:
    """Measures scans/s of each backend for one scan, the torch backend's batched rate and the torch/pyrender ratio."""
    repeats = 5 if quick else 20
    batch_size = 8
    scan = face_like_scan()
    batch = [face_like_scan(seed=seed) for seed in range(batch_size)]
    results = {
        "scan": {"vertices": len(scan.vertices), "triangles": len(scan.faces)},
        "views": 3,
        "image_size": 224,
        "channels": ["shaded", "depth", "normals"],
        "repeats": repeats,
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    torch_renderer = MultiviewRenderer(backend="torch")
    results["torch_scans_per_s"] = 1.0 / _median_seconds(lambda: torch_renderer.render(scan), repeats)
    results["torch_batched_scans_per_s"] = batch_size / _median_seconds(lambda: torch_renderer.render_batch(batch), repeats)
    results["torch_batch_size"] = batch_size
    try:
        pyrender_renderer = MultiviewRenderer(backend="pyrender")
        results["pyrender_scans_per_s"] = 1.0 / _median_seconds(lambda: pyrender_renderer.render(scan), repeats)
        pyrender_renderer.close()
        results["torch_over_pyrender"] = results["torch_scans_per_s"] / results["pyrender_scans_per_s"]
    except RuntimeError as error:
        results["pyrender_error"] = str(error)
    if torch.cuda.is_available():
        cuda_renderer = MultiviewRenderer(backend="torch", device="cuda")

        def cuda_batch():
            cuda_renderer.render_batch(batch)
            torch.cuda.synchronize()

        results["cuda_device"] = torch.cuda.get_device_name()
        results["cuda_batched_scans_per_s"] = batch_size / _median_seconds(cuda_batch, repeats)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="JSON file to write the measurements to")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    arguments = parser.parse_args()
    results = run(arguments.quick)
    text = json.dumps(results, indent=2)
    print(text)
    with open(arguments.output, "w") as output:
        output.write(text + "\n")


if __name__ == "__main__":
    main()
