"""Run the benchmark suite: `python -m benchmarks [--quick] [--only NAMES] [--output-dir DIR]` (or `facet-vlm bench`).

Each benchmark runs in its own process (`python -m benchmarks.<module> --output DIR/<name>.json`), one after the
other, so no thread setting or memory peak of one leaks into the next; the accuracy study writes
DIR/accuracy_study.json. Then `benchmarks.report` regenerates DIR/SUMMARY.md (and, with --update-readme, the
README's results section) from the JSON files.

Names: parsing, rendering, processor, views, training, pipeline, synthetic, demo (the main job, timed), limits and
loading form the group "speed"; accuracy (the accuracy study) and pretraining (what synthetic pretraining adds,
benchmarks/pretraining_gain.py) measure accuracy; "all" (default) is every one of them.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.report import README, RESULTS_DIR, write_report


# Name -> module; the JSON file is DIR/<name>.json, except the accuracy study's.
SPEED = {
    "parsing": "benchmarks.bench_parsing", "rendering": "benchmarks.bench_rendering",
    "processor": "benchmarks.bench_processor", "views": "benchmarks.bench_views",
    "training": "benchmarks.bench_training", "pipeline": "benchmarks.bench_pipeline",
    "synthetic": "benchmarks.bench_synthetic", "demo": "benchmarks.bench_demo", "limits": "benchmarks.bench_limits",
    "loading": "benchmarks.bench_loading",
}  # fmt: skip
ACCURACY = {"accuracy": "benchmarks.accuracy_study"}
BENCHMARKS = {**SPEED, **ACCURACY, "pretraining": "benchmarks.pretraining_gain"}
GROUPS = {"all": list(BENCHMARKS), "speed": list(SPEED)}
PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # the folder that holds the benchmarks package


def selected(only: str | None) -> list:
    """Benchmark names from a comma-separated list of names and groups ("speed", "all"), in suite order."""
    if not only:
        return list(BENCHMARKS)
    wanted = set()
    for name in (part.strip() for part in only.split(",") if part.strip()):
        if name not in BENCHMARKS and name not in GROUPS:
            raise SystemExit(f"Unknown benchmark {name!r}; choose from {', '.join([*BENCHMARKS, *GROUPS])}.")
        wanted.update(GROUPS.get(name, [name]))
    return [name for name in BENCHMARKS if name in wanted]


def command(name: str, output_dir: Path, quick: bool, accuracy_flags: list) -> list:
    """The command line that runs benchmark `name` into `output_dir`."""
    output = output_dir / ("accuracy_study.json" if name in ACCURACY else f"{name}.json")
    if output.is_relative_to(PACKAGE_ROOT):  # the command runs there; a relative path reads better in the JSON
        output = output.relative_to(PACKAGE_ROOT)
    arguments = [sys.executable, "-m", BENCHMARKS[name], "--output", str(output)] + (["--quick"] if quick else [])
    return arguments + (accuracy_flags if name in ACCURACY else [])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The suite's flags (shared by `python -m benchmarks` and `facet-vlm bench`)."""
    parser.add_argument("--quick", action="store_true", help="fewer repeats; CI-sized accuracy study (every row)")
    parser.add_argument("--only", help=f"comma-separated names or groups: {', '.join([*BENCHMARKS, *GROUPS])}")
    parser.add_argument("--output-dir", default=str(RESULTS_DIR), help="folder for the JSON files and SUMMARY.md")
    parser.add_argument("--update-readme", action="store_true", help="also rewrite the README's results section")
    parser.add_argument("--subjects", type=int, help="accuracy study: synthetic subjects")
    parser.add_argument("--folds", type=int, help="accuracy study: subject-independent folds")
    parser.add_argument("--epochs", type=int, help="accuracy study: training epochs")
    parser.add_argument("--workers", type=int, help="accuracy study: folds run in parallel processes")


def run_suite(arguments: argparse.Namespace) -> int:
    """Run the selected benchmarks one after the other, then regenerate the summary; returns 1 if one failed."""
    output_dir = Path(arguments.output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    accuracy_flags = [flag for name in ("subjects", "folds", "epochs", "workers") if getattr(arguments, name) is not None
                      for flag in (f"--{name}", str(getattr(arguments, name)))]  # fmt: skip
    environment = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    failed = []
    for name in selected(arguments.only):
        start = time.perf_counter()
        print(f"== {name}", flush=True)
        completed = subprocess.run(  # the speed benchmarks print their JSON; the accuracy study prints progress
            command(name, output_dir, arguments.quick, accuracy_flags), cwd=PACKAGE_ROOT, env=environment,
            stdout=None if name in ACCURACY else subprocess.DEVNULL,
        )  # fmt: skip
        print(f"== {name}: {'ok' if completed.returncode == 0 else 'FAILED'} in {time.perf_counter() - start:.0f} s")
        if completed.returncode:
            failed.append(name)
    readme = README if arguments.update_readme else None
    write_report(output_dir, readme=readme)
    print(f"Wrote {output_dir / 'SUMMARY.md'}" + (f" and the results section of {readme}" if readme else ""))
    if failed:
        print(f"Failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run_suite(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
