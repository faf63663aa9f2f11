"""The main job, timed: `facet-vlm demo` (generate the synthetic benchmark, train the small preset, evaluate on
held-out subjects, save the model, classify one scan) as a user runs it, in a fresh process.

Usage: python -m benchmarks.bench_demo --output FILE.json [--quick] [--keep-run DIR]

Records the wall time of the whole command against the 15-minute budget of the main job, the training time, and the
subject-independent accuracy against its 90 % target. --quick runs 6 subjects for 1 epoch (a check that the command
works, not a result).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import benchmark_main, load_average


BUDGET_SECONDS = 15 * 60
TARGET_ACCURACY = 0.90
QUICK_FLAGS = ["--subjects", "6", "--epochs", "1"]


def run(quick: bool, keep_run: str | None = None) -> dict:
    """Time the demo in a temporary folder; with `keep_run`, into that folder with its data cache kept (for
    benchmarks/liveness.py, which reads the trained model and its splits)."""
    with tempfile.TemporaryDirectory(prefix="facet-demo-bench-") as folder:
        output = Path(keep_run).resolve() if keep_run else Path(folder) / "demo"
        command = ["facet-vlm", "demo", "--output", str(output)] + (QUICK_FLAGS if quick else [])
        command += ["--keep-cache"] if keep_run else []
        load_before = load_average()
        start = time.perf_counter()
        # `python -m training.cli` is the `facet-vlm` entry point, run from the temporary folder like a user would.
        subprocess.run([sys.executable, "-m", "training.cli", *command[1:]], cwd=folder, check=True,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
                           str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")]))},
                       stdout=subprocess.DEVNULL)  # fmt: skip
        wall = time.perf_counter() - start
        summary = json.loads((output / "demo_summary.json").read_text())
    return {
        "quick": quick,
        "command": " ".join(command),
        "wall_seconds": round(wall, 1),
        "budget_seconds": BUDGET_SECONDS,
        "train_seconds": summary["train_seconds"],
        "accuracy": summary["accuracy"],
        "macro_f1": summary["macro_f1"],
        "target_accuracy": TARGET_ACCURACY,
        "test_samples": summary["test_samples"],
        "classified": {"true_label": summary["true_label"], "prediction": summary["prediction"]},
        "load_average_before": load_before,
        "load_average_after": load_average(),
    }


def main():
    def add_arguments(parser):
        parser.add_argument("--keep-run", help="run the demo into this folder and keep it with its data cache")

    benchmark_main(run, __doc__, quick_help="6 subjects, 1 epoch: the command works, not a result",
                   add_arguments=add_arguments)  # fmt: skip


if __name__ == "__main__":
    main()
