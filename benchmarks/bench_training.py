"""Training step throughput (samples/s) and peak memory per preset: tiny and small on CPU, small and base on CUDA.

Usage: python -m benchmarks.bench_training --output FILE.json [--quick] [--batch-size N]

One step is what `training/train.py` does per batch: its `BatchBuilder` (mixed view augmentation, the class prompts
and one augmented prompt per sample), the forward pass with every loss term, backward, gradient clipping and the
AdamW step, through Accelerate (bf16/fp16 autocast on CUDA, as `mixed_precision="auto"` picks). The batches come from
an in-memory split of random pixels with the preset's views, channels and image size, as training holds its rendered
splits in memory, so rendering is not part of a step (benchmarks/bench_views.py measures it).

Reference, measured in the same run: the same preset with every method part off (CVSA = mean of the views, MTGF off,
cross-entropy only); the ratio is FACET-VLM's samples/s over the reference's.

Every measurement runs in a fresh (spawned) process, so its peak resident memory (`ru_maxrss`) is its own: reported
as the peak and as the increase over the process after its imports (model, optimizer state, activations). On CUDA,
`torch.cuda.max_memory_allocated` is reported too.
"""

from __future__ import annotations

import os


os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `facet-vlm` does; read when torch starts OpenMP

import itertools  # noqa: E402
import multiprocessing  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402

import torch  # noqa: E402

from benchmarks.common import benchmark_main, latency_stats, load_average  # noqa: E402


PRESETS = {"cpu": ("tiny", "small"), "cuda": ("small", "base")}
REFERENCE_OVERRIDES = {"cvsa": "mean", "mtgf": False, "loss_weight_itc": 0.0, "loss_weight_cons": 0.0,
                       "loss_weight_gf": 0.0}  # fmt: skip
SUBJECT_METADATA = ({"gender": "F", "age": 24, "race": "WH"}, {"gender": "M", "age": 41, "race": "AE"})


def _max_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def random_split(config, num_samples: int, seed: int = 0):
    """An in-memory [`ExpressionSplit`] of random float16 pixels shaped like `config`'s rendered views."""
    from modeling_facet.configuration_facet import EMOTION_LABELS
    from modeling_facet.render_settings import channel_count
    from training.data import ExpressionSplit

    shape = (num_samples, config.num_views, channel_count(config.channels), config.image_size, config.image_size)
    pixels = torch.rand(shape, generator=torch.Generator().manual_seed(seed)).half()
    labels = torch.arange(num_samples) % len(EMOTION_LABELS)
    metadata = [SUBJECT_METADATA[i % len(SUBJECT_METADATA)] for i in range(num_samples)]
    return ExpressionSplit(pixels, labels, list(EMOTION_LABELS), subjects=[f"S{i}" for i in range(num_samples)],
                           metadata=metadata)  # fmt: skip


def measure_steps(preset: str, device: str, batch_size: int, steps: int, overrides: dict) -> dict:
    """Time `steps` training steps (after 2 warm-up steps) of `preset` on `device`, best in a fresh process (for
    its own peak memory); in a process that measured another device before, Accelerate's state is reset first."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from training.train import BatchBuilder, TrainConfig, _mixed_precision, _optimizer, build_model_and_processor

    torch.manual_seed(0)
    rss_after_imports = _max_rss_mb()
    cfg = TrainConfig(preset=preset, batch_size=batch_size, model_overrides=dict(overrides))
    precision = "no" if device == "cpu" else _mixed_precision(cfg.mixed_precision)
    AcceleratorState._reset_state(reset_partial_state=True)  # else: "AcceleratorState has already been initialized"
    accelerator = Accelerator(mixed_precision=precision, cpu=device == "cpu")
    model, processor = build_model_and_processor(cfg, multi_label=False)
    model, optimizer = accelerator.prepare(model, _optimizer(model, cfg))
    split = random_split(accelerator.unwrap_model(model).config, 2 * batch_size)
    build_batch = BatchBuilder(cfg, processor, split, accelerator.device)
    order = itertools.count()
    model.train()

    def step():
        index = next(order)
        first = (index % 2) * batch_size
        outputs = model(**build_batch(range(first, first + batch_size), step_seed=index))
        accelerator.backward(outputs.loss)
        accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad()
        if device == "cuda":
            torch.cuda.synchronize()

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(2):
        step()
    timing = latency_stats(step, steps)
    unwrapped = accelerator.unwrap_model(model)
    result = {
        "step": timing,
        "samples_per_s": round(batch_size * 1e3 / timing["median_ms"], 2),
        "parameters": sum(p.numel() for p in unwrapped.parameters()),
        "trainable_parameters": sum(p.numel() for p in unwrapped.parameters() if p.requires_grad),
        "mixed_precision": accelerator.mixed_precision,
        "peak_rss_mb": round(_max_rss_mb(), 1),
        "peak_rss_increase_mb": round(_max_rss_mb() - rss_after_imports, 1),
    }
    if device == "cuda":
        result["cuda_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    result.update(_flop_rates(step, batch_size, result["samples_per_s"], device))
    return result


# Dense bf16 tensor-core peaks (FLOP/s) of the GPUs the project is measured on, from their vendors' data sheets.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12}


def _flop_rates(step, batch_size: int, samples_per_s: float, device: str) -> dict:
    """FLOPs of one training sample (forward and backward, counted by torch's FlopCounterMode over one step), the
    rate they run at, and on a GPU of [`PEAK_BF16_FLOPS`] the model FLOP utilisation (MFU)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    per_sample = counter.get_total_flops() / batch_size
    rates = {"train_gflop_per_sample": round(per_sample / 1e9, 3),
             "achieved_tflop_per_s": round(per_sample * samples_per_s / 1e12, 3)}  # fmt: skip
    if device == "cuda":
        name = torch.cuda.get_device_name()
        peak = next((value for key, value in PEAK_BF16_FLOPS.items() if key in name), None)
        if peak is not None:
            rates["mfu_of_bf16_peak"] = round(per_sample * samples_per_s / peak, 4)
    return rates


def _in_fresh_process(*arguments) -> dict:
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(measure_steps, *arguments).result()


def run(quick: bool = False, batch_size: int = 32, devices: str | None = None, presets: str | None = None) -> dict:
    """Samples/s and peak memory of FACET-VLM and of the reference for each preset and device, side by side
    (`devices`: "cpu", "cuda" or "cpu,cuda", default every device this machine has; `presets`: e.g. "small,base",
    default [`PRESETS`] of each device)."""
    from modeling_facet import FacetVLMConfig

    steps = 3 if quick else 10
    devices = devices.split(",") if devices else ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    results = {
        "benchmark": "training",
        "quick": quick,
        "batch_size": batch_size,
        "timed_steps": steps,
        "torch_threads": torch.get_num_threads(),
        "load_average_before": load_average(),
        "reference": "same preset with CVSA = mean, MTGF off and cross-entropy only",
        "reference_overrides": REFERENCE_OVERRIDES,
        "runs": [],
    }
    for device in devices:
        for preset in presets.split(",") if presets else PRESETS[device]:
            config = FacetVLMConfig.from_preset(preset)
            facet = _in_fresh_process(preset, device, batch_size, steps, {})
            reference = _in_fresh_process(preset, device, batch_size, steps, REFERENCE_OVERRIDES)
            results["runs"].append({
                "preset": preset, "device": device, "views": config.num_views, "image_size": config.image_size,
                "channels": list(config.channels), "facet_vlm": facet, "reference": reference,
                "samples_per_s_over_reference": round(facet["samples_per_s"] / reference["samples_per_s"], 3),
            })  # fmt: skip
    results["load_average_after"] = load_average()
    return results


def _add_arguments(parser) -> None:
    parser.add_argument("--batch-size", type=int, default=32, help="samples per step (train.py's default: 32)")
    parser.add_argument("--devices", default=None, help="cpu, cuda or cpu,cuda (default: every device present)")
    parser.add_argument("--presets", default=None, help="presets to measure, e.g. small,base (default: per device)")


def main() -> None:
    benchmark_main(run, __doc__, quick_help="3 timed steps instead of 10", add_arguments=_add_arguments)


if __name__ == "__main__":
    main()
