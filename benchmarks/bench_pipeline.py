"""Latency of one zero-shot pipeline call (a BU-3DFE-size .wrl file -> sorted label scores) for the small preset on CPU.

Usage: python -m benchmarks.bench_pipeline --output FILE.json [--quick] [--model DIR]

Without --model, a freshly initialised "small" preset model is saved and loaded (its weights do not change the
latency). Reported: the model load time (`load_pipeline` from disk), the first call (which also embeds the class
prompts with the text tower), then the median and 95th percentile of the wall time of 50 calls (10 with --quick), the
median process CPU time per call (all threads; less sensitive to other work on the machine), the stages of a call,
and the median with one torch thread. The target is a median under 250 ms.

OMP_WAIT_POLICY defaults to PASSIVE here, as in `facet-vlm` (training/__init__.py) and the test session: with
OpenMP's spinning waits, the renderer's many small parallel regions ran 3x to 75x slower on this 2-core machine
while other processes kept its cores busy. Export OMP_WAIT_POLICY=ACTIVE to measure the spinning policy.
"""

from __future__ import annotations

import os


os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read once, when torch starts OpenMP: before importing torch

import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from benchmarks.bench_parsing import bu3dfe_mesh  # noqa: E402
from benchmarks.common import benchmark_main, cpu_model, latency_stats  # noqa: E402
from modeling_facet import FacetVLMConfig, FacetVLMForExpressionRecognition, FacetVLMProcessor  # noqa: E402
from datasets_scripts.scan_writers import write_wrl  # noqa: E402
from modeling_facet.mesh_io import load_scan  # noqa: E402
from modeling_facet.pipeline_facet import load_pipeline  # noqa: E402


TARGET_MEDIAN_MS = 250.0


def _small_model(folder: str) -> str:
    config = FacetVLMConfig.from_preset("small")
    processor = FacetVLMProcessor.from_model_config(config)  # writes the tokenizer's ids into the config first
    model = FacetVLMForExpressionRecognition.from_config(config)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def run(quick: bool = False, model_dir: str | None = None) -> dict:
    """Pipeline latency on one scan file, as a JSON-ready dict."""
    calls = 10 if quick else 50
    with tempfile.TemporaryDirectory() as folder:
        model_name = model_dir or "small preset (random weights)"
        model_dir = model_dir or _small_model(os.path.join(folder, "model"))
        path = os.path.join(folder, "F0001_HA04WH_F3D.wrl")
        write_wrl(path, **bu3dfe_mesh())
        scan = load_scan(path)
        load_average = os.getloadavg()[0]

        start = time.perf_counter()
        pipe = load_pipeline(model_dir)
        load_s = time.perf_counter() - start
        start = time.perf_counter()
        pipe(path)
        first_call_ms = (time.perf_counter() - start) * 1e3

        call = latency_stats(lambda: pipe(path), calls)
        inputs = pipe.preprocess(path)
        text_embeds = pipe.prompt_embeddings(None)
        with torch.no_grad():
            stages = {
                "parse_scan": latency_stats(lambda: load_scan(path), calls // 2),
                "render_views": latency_stats(
                    lambda: pipe.processor.image_processor.renderer.render_batch([scan]), calls // 2
                ),
                "preprocess": latency_stats(lambda: pipe.preprocess(path), calls // 2),
                "model_forward": latency_stats(lambda: pipe.model(**inputs, text_embeds=text_embeds), calls // 2),
            }
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        pipe(path)
        one_thread = latency_stats(lambda: pipe(path), calls // 2)
        torch.set_num_threads(threads)
        config = pipe.model.config
        return {
            "benchmark": "pipeline",
            "cpu_model": cpu_model(),
            "cpu_count": os.cpu_count(),
            "torch_threads": threads,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
            "load_average_before": round(load_average, 2),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "quick": quick,
            "calls": calls,
            "model": model_name,
            "model_config": {"vision": config.vision_config.model_type, "text": config.text_config.model_type,
                             "views": len(config.views), "image_size": config.image_size,
                             "channels": config.channels},  # fmt: skip
            "scan": {"file_bytes": os.path.getsize(path), "vertices": len(scan.vertices), "triangles": len(scan.faces)},
            "labels": len(pipe.default_labels()),
            "model_load_s": round(load_s, 3),
            "first_call_ms": round(first_call_ms, 2),
            "pipeline_call": call,
            "pipeline_call_one_thread": one_thread,
            "stages": stages,
            "target_median_ms": TARGET_MEDIAN_MS,
            "meets_target": call["median_ms"] < TARGET_MEDIAN_MS,
        }


def _add_arguments(parser) -> None:
    parser.add_argument("--model", dest="model_dir", help="a trained FACET-VLM folder (default: a fresh small-preset model)")


def main() -> None:
    benchmark_main(run, __doc__, quick_help="10 calls instead of 50", add_arguments=_add_arguments)


if __name__ == "__main__":
    main()
