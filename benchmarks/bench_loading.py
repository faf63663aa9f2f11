"""Time and peak memory of turning a rendered split's float32 pixels (an arrow file in the `datasets` cache) into the
float16 tensor that training holds: `training.data`'s chunked conversion against converting every row at once.

Usage: python -m benchmarks.bench_loading --output FILE.json [--quick]

The split has the size of the default synthetic start's (6,480 samples; 512 with --quick) in the small preset's
views (3 views, 5 channels, 96x96), with random pixels, written once to a temporary folder. Each conversion runs in a
fresh (spawned) process that opens the file memory-mapped, twice in alternating order. Peak memory is the process's
anonymous resident memory (RssAnon, sampled every 20 ms) above what it held before converting: the file's pages that
the memory map reads are cache the kernel can drop, so they are not counted.
"""

from __future__ import annotations

import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from benchmarks.common import benchmark_main, load_average


SAMPLE_SHAPE = (3, 5, 96, 96)  # views, channels, height, width of the small preset
ROWS = {"full": 6480, "quick": 512}  # the default start's splits: 5,760 training and 720 test scans
REPEATS = 2


def _rss_anon_gb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("RssAnon")) / 2**20


def _all_rows_at_once(dataset):
    """The conversion before the chunked one: one float32 array of every row, then its float16 copy."""
    import torch

    return torch.from_numpy(np.asarray(dataset.with_format("numpy")["pixel_values"][:], dtype=np.float16))


def _convert(paths: list, way: str) -> dict:
    """In a fresh process: convert the split in the arrow files `paths` the `way` given; seconds and peak anonymous
    memory."""
    import datasets

    from training.data import _float16_pixels

    dataset = datasets.concatenate_datasets([datasets.Dataset.from_file(path) for path in paths])
    before, peak, done = _rss_anon_gb(), [0.0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_anon_gb())
            done.wait(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.perf_counter()
    pixels = {"chunked": _float16_pixels, "all_at_once": _all_rows_at_once}[way](dataset)
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    peak[0] = max(peak[0], _rss_anon_gb())
    return {"seconds": seconds, "peak_increase_gb": peak[0] - before, "held_gb": pixels.numel() * 2 / 2**30}


def _write_split(folder: Path, rows: int) -> list:
    import datasets

    datasets.disable_progress_bars()
    features = datasets.Features({"pixel_values": datasets.Array4D(shape=SAMPLE_SHAPE, dtype="float32")})

    def samples():
        generator = np.random.default_rng(0)
        for _ in range(rows):
            yield {"pixel_values": generator.standard_normal(SAMPLE_SHAPE, dtype=np.float32)}

    dataset = datasets.Dataset.from_generator(samples, features=features, cache_dir=str(folder))
    return [cache_file["filename"] for cache_file in dataset.cache_files]  # the arrow files it was written to


def run(quick: bool = False) -> dict:
    """Both conversions of one split, `REPEATS` times each in alternating order: medians and their ratios."""
    rows = ROWS["quick" if quick else "full"]
    results = {"benchmark": "loading", "quick": quick, "rows": rows, "sample_shape": list(SAMPLE_SHAPE),
               "load_average_before": load_average()}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="facet-bench-loading-") as work:
        paths = _write_split(Path(work), rows)
        results["float32_gb"] = round(sum(Path(path).stat().st_size for path in paths) / 2**30, 3)
        runs = {"chunked": [], "all_at_once": []}
        for _ in range(REPEATS):
            for way in runs:
                with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
                    runs[way].append(pool.submit(_convert, paths, way).result())
    medians = {way: {key: float(np.median([m[key] for m in measured])) for key in measured[0]}
               for way, measured in runs.items()}  # fmt: skip
    for way, median in medians.items():
        results[way] = {key: round(value, 3) for key, value in median.items()}
    for ratio, key in (("time_ratio", "seconds"), ("peak_ratio", "peak_increase_gb")):
        results[ratio] = round(medians["all_at_once"][key] / medians["chunked"][key], 2)
    results["load_average_after"] = load_average()
    return results


if __name__ == "__main__":
    benchmark_main(run, __doc__)
