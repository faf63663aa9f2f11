"""What synthetic pretraining adds on a benchmark-sized dataset: FACET-VLM fine-tuned from a model pretrained on
synthetic subjects (`--init-from`) against the same recipe trained from scratch.

The target stands in for a real benchmark of a few hundred scans: `--subjects` synthetic subjects drawn with another
generator seed than the pretraining data, so none of its people were seen in pretraining. Both arms train with the
demo recipe (training/configs/demo.yaml) on the same subject-independent folds of its 5-fold protocol; the first
`--folds` folds are run.

Usage: python -m benchmarks.pretraining_gain --output FILE.json [--quick] [--pretrained MODEL] [--subjects N] [--folds K]

Without --pretrained the demo recipe pretrains a model first (100 subjects: about 6 minutes on the idle 2-core
machine); `facet-vlm demo`'s `outputs/demo/model` is such a model.
"""

from __future__ import annotations

import os


os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `facet-vlm` does; read when torch starts OpenMP

import dataclasses  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from benchmarks.common import benchmark_main, load_average  # noqa: E402


TARGET_SEED = 7  # the demo recipe's data (and pretraining) use seed 42
QUICK = {"subjects": 6, "folds": 1, "epochs": 1, "pretraining_subjects": 8}
FULL = {"subjects": 20, "folds": 3, "epochs": None, "pretraining_subjects": 100}  # epochs None: the recipe's


def _summary(records: list) -> dict:
    values = [record["accuracy"] for record in records]
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "per_fold": values, "folds": records}


def run(quick: bool = False, pretrained=None, subjects=None, folds=None, work_dir=None) -> dict:
    """Train both arms on each fold; returns per-fold accuracies, means and the mean gain of pretraining."""
    from training.demo import demo_config
    from training.train import train

    settings = dict(QUICK if quick else FULL)
    settings.update({key: value for key, value in (("subjects", subjects), ("folds", folds)) if value})
    workdir = Path(work_dir or tempfile.mkdtemp(prefix="facet-pretraining-gain-"))
    started, load_before = time.perf_counter(), load_average()
    pretraining_seconds = None
    if pretrained is None:
        source = demo_config(workdir / "pretraining", settings["pretraining_subjects"], settings["epochs"])
        pretraining_seconds = train(source)["train_seconds"]
        pretrained = str(Path(source.output) / "model")
    target = demo_config(workdir / "target", settings["subjects"], settings["epochs"])
    target = dataclasses.replace(target, seed=TARGET_SEED)
    arms = {"scratch": {}, "synthetic_pretraining": {"init_from": str(pretrained)}}
    records = {arm: [] for arm in arms}
    for fold in range(settings["folds"]):
        for arm, overrides in arms.items():
            output = workdir / "target" / f"fold-{fold}" / arm
            metrics = train(dataclasses.replace(target, fold=fold, output=str(output), **overrides))
            records[arm].append({"fold": fold, "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
                                 "train_samples": metrics["train_samples"], "test_samples": metrics["num_samples"],
                                 "train_seconds": round(metrics["train_seconds"], 1)})  # fmt: skip
            shutil.rmtree(output / "model", ignore_errors=True)
    if work_dir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    arms_summary = {arm: _summary(records[arm]) for arm in arms}
    gains = [tuned - scratch for tuned, scratch in zip(arms_summary["synthetic_pretraining"]["per_fold"],
                                                       arms_summary["scratch"]["per_fold"])]  # fmt: skip
    return {
        "quick": quick,
        "settings": {
            "target_subjects": settings["subjects"], "target_seed": TARGET_SEED, "folds_run": settings["folds"],
            "num_folds": target.num_folds, "epochs": target.epochs, "preset": target.preset,
            "learning_rate": target.learning_rate, "test_intensities": target.test_intensities,
            "recipe": "training.demo.demo_config with the target's subjects and seed",
        },  # fmt: skip
        "pretrained": str(pretrained),
        "pretraining_seconds": pretraining_seconds,
        "arms": arms_summary,
        "gain_per_fold": gains,
        "mean_gain": float(np.mean(gains)),
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }


def add_arguments(parser):
    parser.add_argument("--pretrained", help="a FACET-VLM model folder to fine-tune (default: pretrain one first)")
    parser.add_argument("--subjects", type=int, help=f"target subjects (default {FULL['subjects']}, quick 6)")
    parser.add_argument("--folds", type=int, help=f"folds to run (default {FULL['folds']}, quick 1)")
    parser.add_argument("--work-dir", help="keep the data and runs in this folder (default: a temporary one)")


def main():
    benchmark_main(run, __doc__, quick_help="CI-sized: tiny pretraining, 6 subjects, 1 fold, 1 epoch",
                   add_arguments=add_arguments)  # fmt: skip


if __name__ == "__main__":
    main()
