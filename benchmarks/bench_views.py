"""Throughput of the ``views`` config's preparation (scans rendered per second) with 1 and 2 processes.

A synthetic BU-3DFE tree (5 subjects with --quick, 20 otherwise; 25 models each) is prepared by the BU-3DFE
builder's ``views`` config with the default 3 views at the "small" preset's image size; each process count gets
a fresh cache. A second ``download_and_prepare`` of the same config measures the cache hit. Load from other work
on the machine hits the default multi-threaded torch run hardest (OpenMP spin-waits), so it is also timed with
one torch thread.

Usage: python -m benchmarks.bench_views --output FILE.json [--quick]
"""

from __future__ import annotations

import os
import tempfile
import time

import datasets
import torch

from benchmarks.common import benchmark_main, cpu_model
from datasets_scripts.bu3dfe import BU3DFE
from datasets_scripts.synthetic_faces import write_bu3dfe_tree
from modeling_facet import FacetVLMConfig


# (name, processes, torch threads in the main process; None keeps torch's default). Workers of num_proc > 1 always
# render with one thread each (see datasets_scripts.common).
SETTINGS = (("num_proc_1", 1, None), ("num_proc_1_one_thread", 1, 1), ("num_proc_2", 2, None))


def _prepare(tree: str, cache_dir: str, num_proc: int, image_size: int) -> dict:
    """Prepare the views config into a fresh cache, then again from the cache; the timings and the scan count."""
    builder = BU3DFE(
        config_name="views", data_dir=tree, cache_dir=cache_dir, protocol="all7", num_folds=2, image_size=image_size
    )
    start = time.perf_counter()
    builder.download_and_prepare(num_proc=num_proc)
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    builder.download_and_prepare(num_proc=num_proc)
    scans = builder.info.splits["train"].num_examples
    return {
        "scans": scans,
        "seconds": seconds,
        "scans_per_s": scans / seconds,
        "cache_hit_seconds": time.perf_counter() - start,
        "views": [list(view) for view in builder.config.views],
        "channels": list(builder.config.channels),
    }


def run(quick: bool) -> dict:
    """Scans per second of ``BU3DFE(config_name="views").download_and_prepare(num_proc=N)`` for N in 1, 2 (and
    N = 1 with one torch thread, which separates the gain of processes from that of avoiding OpenMP contention)."""
    num_subjects = 5 if quick else 20
    image_size = FacetVLMConfig.from_preset("small").image_size
    datasets.disable_progress_bars()
    default_threads = torch.get_num_threads()
    results = {
        "subjects": num_subjects,
        "image_size": image_size,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": default_threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "load_average_before": os.getloadavg()[0],
    }
    with tempfile.TemporaryDirectory() as workdir:
        tree = os.path.join(workdir, "BU_3DFE")
        write_bu3dfe_tree(tree, num_subjects, progress=False)
        for name, num_proc, threads in SETTINGS:
            torch.set_num_threads(threads or default_threads)
            try:
                results[name] = _prepare(tree, os.path.join(workdir, name), num_proc, image_size)
            finally:
                torch.set_num_threads(default_threads)
    results["speedup_2_over_1"] = results["num_proc_2"]["scans_per_s"] / results["num_proc_1"]["scans_per_s"]
    results["load_average_after"] = os.getloadavg()[0]
    return results


def main():
    benchmark_main(run, __doc__, quick_help="5 subjects instead of 20")


if __name__ == "__main__":
    main()
