"""Accuracy study on the synthetic benchmark: FACET-VLM against baselines and its own ablations, side by side.

Every row is trained and tested on the SAME subject-independent folds (the demo recipe's protocol and data seed, so
the folds depend only on the subject count and fold count) and, for each fold, with the SAME model seeds: the model
seed (initialisation, data order, augmentation) is separate from the data seed (folds, synthetic people), so a
difference between two rows is measured on pairs that share the fold and the seed. Training is budgeted in steps,
not epochs, so that rows with more or fewer examples get the same number of updates; the depth CNN alone trains with
its own recipe (`benchmarks.baselines.DEPTH_CNN_RECIPE`, recorded in its row), as a baseline deserves its best shot.
For every row the study reports the test and train metric over the (fold, seed) runs, and the paired difference to
the full model with a 95 % t interval over those pairs: a part whose interval does not exclude zero has "no
measurable effect".

Rows: FACET-VLM with every part; without CVSA (mean of the views); without MTGF; without L_cons; without L_gf; a
single frontal view; 5 views (yaw 0, +-20, +-40); with mixed view augmentation; with view occlusion; the baselines of
benchmarks/baselines.py (frontal depth map + logistic regression, a depth-map CNN, MVCNN); 4D (BU-4DFE-layout
synthetic sequences); action units (multi-label, mean F1); and zero-shot labels: trained with the synonyms in
`ZERO_SHOT_WORDS` kept out of the augmented prompts, then tested with those synonyms as the class names.

    python -m benchmarks.accuracy_study --quick        # CI-sized: 6 subjects, 2 folds, 1 seed, 4 steps, every row
    python -m benchmarks.accuracy_study --subjects 60 --folds 10 --run-folds 2 --seeds 3 --steps 300 \
        --rows facet_vlm,no_cvsa,no_mtgf,depth_cnn --workers 2

The full study is long on a 2-core CPU: a run of the small preset processes about 60 samples/s when the machine is
idle (benchmarks/bench_training.py), so 300 steps of 32 take about 3 minutes, and every row costs that for each fold
and seed (the baselines a fraction of it) plus rendering (about half a minute per fold at 60 subjects).
"""

from __future__ import annotations

import os


os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `facet-vlm` does; read when torch starts OpenMP

import argparse  # noqa: E402
import concurrent.futures  # noqa: E402
import dataclasses  # noqa: E402
import math  # noqa: E402
import multiprocessing  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from benchmarks.common import load_average, write_json  # noqa: E402


RESULTS_DIR = Path(__file__).resolve().parent / "results"
# Synonyms tested as zero-shot class names; training never draws them for its augmented prompts.
ZERO_SHOT_WORDS = {"happiness": "joyful", "surprise": "astonished", "anger": "furious", "disgust": "disgusted",
                   "fear": "scared", "sadness": "unhappy"}  # fmt: skip
FIVE_VIEWS = [[0.0, 0.0], [20.0, 0.0], [-20.0, 0.0], [40.0, 0.0], [-40.0, 0.0]]
QUICK = {"subjects": 6, "folds": 2, "run_folds": 2, "seeds": 1, "steps": 4}
FULL = {"subjects": 60, "folds": 10, "run_folds": 10, "seeds": 3, "steps": 300}  # BU-3DFE's size and protocol
REFERENCE_ROW = "facet_vlm"
# Pairs that a paired difference needs for an interval and a verdict: accuracy moves in steps of one test scan, so
# two runs often differ by the same amount twice, and two equal differences give a zero-width t interval.
MIN_PAIRS = 3
# The method's parts, on whatever the preset's defaults (the small preset turns them off: no measured effect), so
# that every ablation row removes one part from the same full model.
EVERY_PART = ("cvsa", "mtgf", "loss_weight_cons", "loss_weight_gf")


def model_overrides(row) -> dict:
    """The model config fields `row` trains with: every part of the method (FacetVLMConfig's own defaults), less what
    the row removes."""
    from modeling_facet import FacetVLMConfig

    return {**{name: getattr(FacetVLMConfig, name) for name in EVERY_PART}, **row.overrides}


@dataclass(frozen=True)
class StudyRow:
    """One row of the study: how it is trained (`kind`), on which dataset, with which model overrides and metric."""

    name: str
    description: str
    kind: str = "facet"  # "facet" | "zero_shot" | "depth_logreg" | "depth_cnn" | "mvcnn"
    dataset: str = "synthetic"
    overrides: dict = field(default_factory=dict)
    metric: str = "accuracy"
    training_overrides: dict = field(default_factory=dict)  # TrainConfig fields that differ from the recipe


ROWS = (
    StudyRow("facet_vlm", "FACET-VLM, every part (3 views)"),
    StudyRow("no_cvsa", "without CVSA (mean of the views)", overrides={"cvsa": "mean"}),
    StudyRow("no_mtgf", "without MTGF", overrides={"mtgf": False}),
    StudyRow("no_l_cons", "without L_cons", overrides={"loss_weight_cons": 0.0}),
    StudyRow("no_l_gf", "without L_gf", overrides={"loss_weight_gf": 0.0}),
    StudyRow("single_view", "a single frontal view (V = 1)", overrides={"views": [[0.0, 0.0]]}),
    StudyRow("five_views", "5 views: yaw 0, +-20, +-40 (V = 5)", overrides={"views": FIVE_VIEWS}),
    StudyRow("view_augmentation", "with mixed view augmentation (off in the recipe)",
             training_overrides={"augment_views": True}),
    StudyRow("view_occlusion", "with view occlusion in training (a quarter of the samples lose one view)",
             training_overrides={"occlude_views": 0.25}),
    StudyRow("depth_logreg", "baseline: frontal depth map + logistic regression", kind="depth_logreg"),
    StudyRow("depth_cnn", "baseline: CNN on one 64x64 frontal depth map", kind="depth_cnn"),
    StudyRow("mvcnn", "baseline: MVCNN (shared CNN per view, mean of view logits)", kind="mvcnn"),
    StudyRow("facet_vlm_4d", "FACET-VLM 4D: synthetic BU-4DFE-layout sequences, whole sequences",
             dataset="synthetic4d"),
    StudyRow("facet_vlm_aus", "FACET-VLM action units (multi-label), mean F1", dataset="synthetic_aus",
             metric="mean_f1"),
    StudyRow("zero_shot", "zero-shot class names: synonyms never used in training prompts", kind="zero_shot"),
)  # fmt: skip


def study_config(subjects: int, folds: int, steps: int, workdir):
    """The demo recipe (`training.demo.demo_config`) with the study's subject count, folds and step budget."""
    from training.demo import demo_config

    recipe = demo_config(Path(workdir) / "runs", num_subjects=subjects)
    return dataclasses.replace(recipe, num_folds=folds, cv=False, max_steps=steps)


def write_trees(cfg, workdir) -> dict:
    """Write the BU-3DFE- and BU-4DFE-layout synthetic trees once (what the builder writes for `synthetic_subjects`
    and `seed`), so that every fold's cache can be removed without generating the faces again."""
    from datasets_scripts import synthetic_faces

    roots = {"bu3dfe": Path(workdir) / "data" / "bu3dfe", "bu4dfe": Path(workdir) / "data" / "bu4dfe"}
    workers = min(2, os.cpu_count() or 1)
    writers = {"bu3dfe": synthetic_faces.write_bu3dfe_tree, "bu4dfe": synthetic_faces.write_bu4dfe_tree}
    for layout, root in roots.items():
        if not synthetic_faces.is_complete_tree(root):
            writers[layout](root, cfg.synthetic_subjects, synthetic_faces.SyntheticConfig(seed=cfg.data_seed),
                            num_workers=workers, progress=False)  # fmt: skip
    return roots


def row_config(row: StudyRow, cfg, fold: int, seed: int, roots: dict, workdir):
    """The training settings of `row` on `fold` with model seed `seed`: same recipe, folds and data for every row."""
    sequences = row.dataset == "synthetic4d"
    return dataclasses.replace(
        cfg, dataset=row.dataset, fold=fold, seed=seed, data_dir=str(roots["bu4dfe" if sequences else "bu3dfe"]),
        model_overrides=model_overrides(row),
        exclude_words=list(ZERO_SHOT_WORDS.values()) if row.kind == "zero_shot" else [],
        train_intensities=None if sequences else cfg.train_intensities,
        test_intensities=None if sequences else cfg.test_intensities,
        output=str(Path(workdir) / "runs" / f"fold-{fold}" / f"seed-{seed}" / row.name),
        cache_dir=str(Path(workdir) / "cache" / f"fold-{fold}"), **row.training_overrides,
    )  # fmt: skip


def _splits(cfg):
    from modeling_facet import FacetMeshImageProcessor, FacetVLMConfig
    from training.data import load_splits

    config = FacetVLMConfig.from_preset(cfg.preset, **cfg.model_overrides)
    return config, load_splits(cfg, FacetMeshImageProcessor.from_model_config(config), show_progress=False)


def _zero_shot(cfg, trained: dict) -> dict:
    """Test the model `train` saved with the zero-shot synonyms as class names."""
    from modeling_facet.prompts import label_word
    from training.data import load_splits
    from training.evaluate_model import evaluate_split, load_trained

    model, processor = load_trained(Path(cfg.output) / "model")
    test = load_splits(cfg, processor.image_processor, show_progress=False)["test"]
    words = [ZERO_SHOT_WORDS[name] for name in test.label_names]
    metrics = evaluate_split(model, processor, test, words)
    metrics["accuracy_with_training_label_names"] = trained["accuracy"]
    metrics["train_metrics"] = trained["train_metrics"]  # with the training label names
    # Training named each class by its first word outside exclude_words: none of the zero-shot words (checked).
    metrics["words_in_training_class_prompts"] = [word for name, word in zip(test.label_names, words)
                                                  if label_word(name, cfg.exclude_words) == word]  # fmt: skip
    return metrics


def run_row(row: StudyRow, cfg) -> dict:
    """Train and test `row` with `cfg` (see [`row_config`]); the metrics of its test split, with the training split's
    as `train_metrics`. MVCNN trains for the epochs that match the step budget, the depth CNN with its own recipe."""
    from benchmarks.baselines import depth_logistic_regression, train_depth_cnn, train_mvcnn
    from training.train import train

    if row.kind in ("facet", "zero_shot"):
        metrics = train(cfg)
        return _zero_shot(cfg, metrics) if row.kind == "zero_shot" else metrics
    config, splits = _splits(cfg)
    train_split, test_split = splits["train"], splits["test"]
    if row.kind == "depth_logreg":
        metrics = depth_logistic_regression(train_split, test_split, config.views, config.channels)
    elif row.kind == "depth_cnn":
        metrics = train_depth_cnn(train_split, test_split, config.views, config.channels, seed=cfg.seed)
    elif row.kind == "mvcnn":
        epochs = max(1, math.ceil(cfg.max_steps * cfg.batch_size / len(train_split)))
        metrics = train_mvcnn(train_split, test_split, epochs=epochs, batch_size=cfg.batch_size,
                              learning_rate=cfg.learning_rate, seed=cfg.seed)  # fmt: skip
    else:
        raise ValueError(f"Unknown study row kind {row.kind!r}.")
    metrics["train_metrics"] = {"accuracy": metrics.pop("train_accuracy")}
    return metrics


def fold_test_subjects(cfg, roots: dict) -> dict:
    """Test subjects of `cfg.fold` in the static and in the sequence tree (the unrendered configs: no rendering)."""
    import datasets

    from datasets_scripts.synthetic import SyntheticFaces

    subjects = {}
    datasets.disable_progress_bars()
    for config_name, root in (("scans", roots["bu3dfe"]), ("sequences", roots["bu4dfe"])):
        builder = SyntheticFaces(config_name=config_name, data_dir=str(root), cache_dir=cfg.cache_dir,
                                 protocol=cfg.protocol, fold=cfg.fold, num_folds=cfg.num_folds, seed=cfg.data_seed)  # fmt: skip
        builder.download_and_prepare()
        subjects[config_name] = sorted(set(builder.as_dataset()["test"]["subject"]))
    datasets.enable_progress_bars()
    return subjects


def _same_people(a: list, b: list) -> bool:
    """BU-3DFE ids (F0001) and BU-4DFE ids (F001) name subject numbers alike: compare (letter, number)."""
    return {(s[0], int(s[1:])) for s in a} == {(s[0], int(s[1:])) for s in b}


def paired_difference(records: list, reference: list) -> dict:
    """Mean difference of `records` minus `reference` over the (fold, seed) runs both have, with a 95 % t interval
    over those pairs, and the verdict: "gain" or "loss" where the interval excludes zero, else "no measurable
    effect"; "too few pairs" below `MIN_PAIRS`, and no interval where every pair differs by the same amount (as
    accuracies on one test set often do), which a t interval would call certain."""
    from scipy import stats

    by_run = {(r["fold"], r["seed"]): r["value"] for r in reference}
    differences = [r["value"] - by_run[(r["fold"], r["seed"])] for r in records if (r["fold"], r["seed"]) in by_run]
    result = {"pairs": len(differences), "mean": float(np.mean(differences)) if differences else None,
              "ci95": None, "verdict": "too few pairs"}  # fmt: skip
    if len(differences) < MIN_PAIRS:
        return result
    if np.ptp(differences) < 1e-9:  # equal up to float rounding
        result["verdict"] = "no spread between pairs"
    else:
        half = stats.t.ppf(0.975, len(differences) - 1) * np.std(differences, ddof=1) / math.sqrt(len(differences))
        low, high = result["mean"] - half, result["mean"] + half
        result["ci95"] = [float(low), float(high)]
        result["verdict"] = "gain" if low > 0 else "loss" if high < 0 else "no measurable effect"
    return result


def summarise(row: StudyRow, records: list, reference: list | None = None) -> dict:
    """Mean, std (ddof=0) and per-run values of `row`'s test metric over the (fold, seed) runs so far, the mean train
    metric, the depth CNN's training recipe, and (with the reference row's records) the paired difference to the full
    model."""
    values = [record["value"] for record in records]
    train_values = [record["train_value"] for record in records if record.get("train_value") is not None]
    summary = {
        "name": row.name, "description": row.description, "kind": row.kind, "dataset": row.dataset,
        "metric": row.metric, "model_overrides": model_overrides(row), "training_overrides": dict(row.training_overrides),
        "mean": float(np.mean(values)) if values else None, "std": float(np.std(values)) if values else None,
        "train_mean": float(np.mean(train_values)) if train_values else None,
        "per_run": values, "runs": records, "wall_seconds": round(sum(record["seconds"] for record in records), 1),
    }  # fmt: skip
    if row.kind == "depth_cnn":
        from benchmarks.baselines import DEPTH_CNN_RECIPE

        summary["recipe"] = dataclasses.asdict(DEPTH_CNN_RECIPE)
    if reference is not None and row.name != REFERENCE_ROW and row.metric == "accuracy" and row.dataset == "synthetic":
        summary["paired_difference"] = paired_difference(records, reference)
    return summary


def _run_record(fold: int, seed: int, metrics: dict, row: StudyRow, seconds: float) -> dict:
    record = {"fold": fold, "seed": seed, "value": float(metrics[row.metric]),
              "train_value": metrics.get("train_metrics", {}).get(row.metric), "seconds": round(seconds, 1),
              "test_samples": metrics.get("num_samples")}  # fmt: skip
    for key in ("macro_f1", "train_samples", "chosen_C", "accuracy_with_training_label_names",
                "words_in_training_class_prompts"):  # fmt: skip
        if key in metrics:
            record[key] = metrics[key]
    return record


def select_rows(names=None) -> tuple:
    """The study rows named in `names` (comma-separated or a list), in study order; every row when None."""
    if not names:
        return ROWS
    wanted = [name.strip() for name in (names.split(",") if isinstance(names, str) else names) if name.strip()]
    unknown = sorted(set(wanted) - {row.name for row in ROWS})
    if unknown:
        raise ValueError(f"Unknown study rows {unknown}; choose from {[row.name for row in ROWS]}.")
    return tuple(row for row in ROWS if row.name in wanted)


def run_fold(fold: int, cfg, roots: dict, workdir, seeds: int, keep_work: bool = False, threads: int | None = None,
             rows=ROWS) -> dict:  # fmt: skip
    """`rows` on `fold` with model seeds 0 .. `seeds` - 1: its test subjects and one record per row and seed (run in a
    worker process when `--workers` > 1, where `threads` caps torch's intra-op threads so that the workers share
    the cores instead of competing)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    subjects_of_fold = fold_test_subjects(row_config(ROWS[0], cfg, fold, 0, roots, workdir), roots)
    subjects_of_fold["same_people"] = _same_people(subjects_of_fold["scans"], subjects_of_fold["sequences"])
    records = {row.name: [] for row in rows}
    for seed in range(seeds):
        for row in rows:
            start = time.perf_counter()
            run_cfg = row_config(row, cfg, fold, seed, roots, workdir)
            record = _run_record(fold, seed, run_row(row, run_cfg), row, time.perf_counter() - start)
            records[row.name].append(record)
            if not keep_work:
                shutil.rmtree(run_cfg.output, ignore_errors=True)
            print(f"[fold {fold} seed {seed}] {row.name}: {row.metric} {record['value']:.4f} "
                  f"(train {record['train_value']}) ({record['seconds']:.0f} s)", flush=True)  # fmt: skip
    if not keep_work:
        shutil.rmtree(Path(workdir) / "cache" / f"fold-{fold}", ignore_errors=True)
    return {"fold": fold, "test_subjects": subjects_of_fold, "records": records}


def run(quick: bool = False, subjects: int | None = None, folds: int | None = None, run_folds: int | None = None,
        seeds: int | None = None, steps: int | None = None, output=None, work_dir=None, keep_work: bool = False,
        workers: int = 1, rows=None) -> dict:  # fmt: skip
    """Run every row (or the `rows` named) on the first `run_folds` folds with `seeds` model seeds each, rewriting
    `output` (JSON) after each fold; returns the final results.

    With `workers` > 1 the folds run in that many processes, each with an equal share of the cores for torch: on
    the 2-core machine two single-threaded trainings process about 1.5x the samples per second of one two-threaded
    training (small preset: about 44 samples/s each against 58).
    """
    rows = select_rows(rows)
    defaults = QUICK if quick else FULL
    subjects, folds, seeds = subjects or defaults["subjects"], folds or defaults["folds"], seeds or defaults["seeds"]
    run_folds, steps = min(run_folds or defaults["run_folds"], folds), steps or defaults["steps"]
    output = Path(output or RESULTS_DIR / "accuracy_study.json")
    workdir = Path(work_dir or tempfile.mkdtemp(prefix="facet-accuracy-study-"))
    started = time.perf_counter()
    cfg = study_config(subjects, folds, steps, workdir)
    results = {
        "benchmark": "accuracy_study",
        "quick": quick,
        "complete": False,
        "settings": {
            "subjects": subjects, "folds": folds, "folds_run": run_folds, "seeds": seeds, "steps": steps,
            "preset": cfg.preset, "protocol": cfg.protocol, "learning_rate": cfg.learning_rate,
            "batch_size": cfg.batch_size, "test_intensities": cfg.test_intensities,
            "train_intensities": cfg.train_intensities, "data_seed": cfg.data_seed,
            "recipe": "training.demo.demo_config (subjects, folds and the step budget replaced)",
            "zero_shot_words": ZERO_SHOT_WORDS, "std": "population (ddof=0) across runs",
            "paired_difference": f"row minus {REFERENCE_ROW} on the same (fold, seed), 95 % t interval",
            "workers": workers,
        },  # fmt: skip
        "load_average_before": load_average(),
        "fold_test_subjects": [],
        "rows": [summarise(row, []) for row in rows],
    }
    roots = write_trees(cfg, workdir)
    done = []

    def record(fold_result: dict):
        done.append(fold_result)
        done.sort(key=lambda result: result["fold"])
        results["fold_test_subjects"] = [{"fold": result["fold"], **result["test_subjects"]} for result in done]
        runs = {row.name: [record for result in done for record in result["records"][row.name]] for row in rows}
        reference = runs.get(REFERENCE_ROW)
        results["rows"] = [summarise(row, runs[row.name], reference) for row in rows]
        results["wall_seconds"] = round(time.perf_counter() - started, 1)
        write_json(results, output, echo=False)

    if workers <= 1:
        for fold in range(run_folds):
            record(run_fold(fold, cfg, roots, workdir, seeds, keep_work, rows=rows))
    else:
        threads = max(1, (os.cpu_count() or 1) // workers)
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            jobs = [pool.submit(run_fold, fold, cfg, roots, workdir, seeds, keep_work, threads, rows)
                    for fold in range(run_folds)]  # fmt: skip
            for job in concurrent.futures.as_completed(jobs):
                record(job.result())
    results["complete"] = True
    results["load_average_after"] = load_average()
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    write_json(results, output, echo=False)
    if not keep_work and work_dir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI-sized: 6 subjects, 2 folds, 1 seed, 4 steps")
    parser.add_argument("--subjects", type=int, help=f"synthetic subjects (default {FULL['subjects']})")
    parser.add_argument("--folds", type=int, help=f"subject-independent folds of the protocol (default {FULL['folds']})")
    parser.add_argument("--run-folds", type=int, help="run the first N folds (default: all)")
    parser.add_argument("--seeds", type=int, help=f"model seeds per fold (default {FULL['seeds']})")
    parser.add_argument("--steps", type=int, help=f"training steps per run (default {FULL['steps']})")
    parser.add_argument("--output", default=str(RESULTS_DIR / "accuracy_study.json"), help="JSON file to write")
    parser.add_argument("--work-dir", help="folder for the data, caches and runs (default: a temporary folder)")
    parser.add_argument("--keep-work", action="store_true", help="keep the trained models and rendered caches")
    parser.add_argument("--workers", type=int, default=1, help="folds run in parallel processes (default 1)")
    parser.add_argument("--rows", help="comma-separated row names to run (default: every row); use another --output")
    arguments = parser.parse_args(argv)
    results = run(**vars(arguments))
    for row in results["rows"]:
        paired = row.get("paired_difference")
        difference = (f"  paired {paired['mean']:+.4f} {paired['ci95']} {paired['verdict']}"
                      if paired and paired["mean"] is not None else "")  # fmt: skip
        print(f"{row['name']:>17}  {row['metric']:>8}  {row['mean']:.4f} +- {row['std']:.4f}  train {row['train_mean']}"
              + difference)
    print(f"Wrote {arguments.output} ({results['wall_seconds']:.0f} s)")
    return results


if __name__ == "__main__":
    main()
