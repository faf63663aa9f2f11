"""End-to-end throughput of FacetMeshImageProcessor: a BU-3DFE-size .wrl file path -> normalised pixel_values.

Usage: python -m benchmarks.bench_processor --output FILE.json [--quick] [--threads N]

Measured for 3 views at 224 px and at the "small" preset's size, one scan per call and a batch of 8, with and
without mixed view augmentation, plus the share of the time spent parsing, rendering and augmenting. Torch runs
with one thread by default, as in a DataLoader worker (which is where the processor runs during training); this
also keeps the timings stable on a shared machine, where oversubscribed intra-op threads slow down many-fold.
"""

from __future__ import annotations

import os
import platform
import tempfile

import numpy as np
import torch

from benchmarks.bench_parsing import bu3dfe_mesh
from benchmarks.common import benchmark_main, cpu_model, median_ms
from modeling_facet import FacetMeshImageProcessor, FacetVLMConfig
from datasets_scripts.scan_writers import write_wrl
from modeling_facet.mesh_io import load_scan


BATCH_SIZE = 8


def _measure(processor: FacetMeshImageProcessor, path: str, repeats: int) -> dict:
    scan = load_scan(path)
    rendered = torch.from_numpy(processor.renderer.render_batch([scan]))[:, None]  # (1, T=1, V, C, H, W)
    rng = np.random.default_rng(0)
    stages = {
        "parse": median_ms(lambda: load_scan(path), repeats),
        "render": median_ms(lambda: processor.renderer.render_batch([scan]), repeats),
        "augment": median_ms(lambda: processor.augment_views(rendered, rng), repeats),
    }
    plain_ms = median_ms(lambda: processor(path), repeats)
    augmented_ms = median_ms(lambda: processor(path, augment=True, seed=0), repeats)
    batch_ms = median_ms(lambda: processor([path] * BATCH_SIZE, augment=True, seed=0), max(1, repeats // 2))
    total = sum(stages.values())
    return {
        "views": len(processor.views),
        "image_size": processor.image_size,
        "channels": processor.channels,
        "ms_per_scan": round(plain_ms, 2),
        "ms_per_scan_augmented": round(augmented_ms, 2),
        "scans_per_s": round(1e3 / plain_ms, 2),
        "scans_per_s_augmented": round(1e3 / augmented_ms, 2),
        f"scans_per_s_augmented_batch_{BATCH_SIZE}": round(BATCH_SIZE * 1e3 / batch_ms, 2),
        "stage_ms": {name: round(ms, 2) for name, ms in stages.items()},
        "stage_share": {name: round(ms / total, 3) for name, ms in stages.items()},
    }


def run(quick: bool = False, threads: int = 1) -> dict:
    """Median timings of the image processor on one .wrl scan with `threads` torch threads, as a JSON-ready dict."""
    torch.set_num_threads(threads)
    repeats = 3 if quick else 15
    small = FacetVLMConfig.from_preset("small")
    processors = {
        "224px": FacetMeshImageProcessor(image_size=224),
        "small_preset": FacetMeshImageProcessor.from_model_config(small),
    }
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "F0001_HA04WH_F3D.wrl")
        write_wrl(path, **bu3dfe_mesh())
        scan = load_scan(path)
        results = {
            "benchmark": "processor",
            "cpu": cpu_model(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average_1min_at_start": round(os.getloadavg()[0], 2),  # other work on the machine skews timings
            "python": platform.python_version(),
            "torch": torch.__version__,
            "quick": quick,
            "repeats": repeats,
            "backend": "torch",
            "scan": {"file_bytes": os.path.getsize(path), "vertices": len(scan.vertices), "triangles": len(scan.faces)},
        }
        for name, processor in processors.items():
            results[name] = _measure(processor, path, repeats)
    return results


def _add_arguments(parser) -> None:
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as in a DataLoader worker)")


def main() -> None:
    benchmark_main(run, __doc__, add_arguments=_add_arguments)


if __name__ == "__main__":
    main()
