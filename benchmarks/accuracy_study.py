"""Accuracy study on the synthetic benchmark: FACET-VLM against two baselines and its own ablations, side by side.

Every row is trained and tested on the SAME subject-independent folds (the demo recipe's protocol and seed, so the
folds depend only on the subject count and fold count), and reported as the mean and standard deviation (ddof=0)
across folds with the per-fold values. The recipe (preset, learning rate, batch size, epochs, intensities) is
`training.demo.demo_config`'s, read at run time; only the subject count, the epochs and the folds are flags.

Rows: FACET-VLM with every part; without CVSA (mean of the views); without MTGF; without L_cons; without L_gf; a
single frontal view; 5 views (yaw 0, +-20, +-40); with the mixed view augmentation that the recipe leaves off; the
baselines of benchmarks/baselines.py (frontal depth map + logistic regression, MVCNN); 4D (BU-4DFE-layout synthetic
sequences cut into sliding windows); action units (multi-label, mean F1); and zero-shot labels: trained with the
synonyms in `ZERO_SHOT_WORDS` kept out of the augmented prompts, then tested with those synonyms as the class names.

    python -m benchmarks.accuracy_study --quick        # CI-sized: 6 subjects, 2 folds, 1 epoch, every row
    python -m benchmarks.accuracy_study                # 20 subjects, 5 folds, the recipe's epochs
    python -m benchmarks.accuracy_study --subjects 100 --folds 5 --epochs 12

Time on the 2-core AMD EPYC development machine, which is shared: --quick took 110 s when the machine was otherwise
idle and 500 s at a load average of 8. A training step of the small preset processes about 70 samples/s when idle
(benchmarks/bench_training.py; 12-25 under load), and one fold costs about 11 "3-view trainings" of
subjects * 0.8 * 24 samples x epochs (1 view ~0.3, 5 views ~1.7, 4D ~2, the baselines ~0.3, the other rows 1 each)
plus rendering (about 1 minute per fold for 20 subjects). So the default full mode (20 subjects, 5 folds, 12 epochs)
takes about 70 minutes when the machine is idle and 2-3 hours under load; 100 subjects about 6 hours when idle.
Measured: `--subjects 25 --folds 5 --workers 3` took 85 minutes (5,086 s), other jobs sharing the machine for part
of it; the 4D row with sliding windows has about 2.3 times the examples of whole sequences.
"""

from __future__ import annotations

import os


os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `facet-vlm` does; read when torch starts OpenMP

import argparse  # noqa: E402
import concurrent.futures  # noqa: E402
import dataclasses  # noqa: E402
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
QUICK = {"subjects": 6, "folds": 2, "epochs": 1}
FULL = {"subjects": 20, "folds": 5, "epochs": None}  # epochs None: the demo recipe's


@dataclass(frozen=True)
class StudyRow:
    """One row of the study: how it is trained (`kind`), on which dataset, with which model overrides and metric."""

    name: str
    description: str
    kind: str = "facet"  # "facet" | "zero_shot" | "depth_logreg" | "mvcnn"
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
    StudyRow("depth_logreg", "baseline: frontal depth map + logistic regression", kind="depth_logreg"),
    StudyRow("mvcnn", "baseline: MVCNN (shared CNN per view, mean of view logits)", kind="mvcnn"),
    StudyRow("facet_vlm_4d", "FACET-VLM 4D: synthetic BU-4DFE-layout sequences, sliding windows (12 frames, stride 6)",
             dataset="synthetic4d", training_overrides={"window_length": 12, "window_stride": 6}),
    StudyRow("facet_vlm_aus", "FACET-VLM action units (multi-label), mean F1", dataset="synthetic_aus",
             metric="mean_f1"),
    StudyRow("zero_shot", "zero-shot class names: synonyms never used in training prompts", kind="zero_shot"),
)  # fmt: skip


def study_config(subjects: int, folds: int, epochs: int | None, workdir):
    """The demo recipe (`training.demo.demo_config`) with the study's subject count, folds and epochs."""
    from training.demo import demo_config

    recipe = demo_config(Path(workdir) / "runs", num_subjects=subjects, epochs=epochs)
    return dataclasses.replace(recipe, num_folds=folds, cv=False)


def write_trees(cfg, workdir) -> dict:
    """Write the BU-3DFE- and BU-4DFE-layout synthetic trees once (what the builder writes for `synthetic_subjects`
    and `seed`), so that every fold's cache can be removed without generating the faces again."""
    from datasets_scripts.synthetic_faces import SyntheticConfig, write_bu3dfe_tree, write_bu4dfe_tree

    roots = {"bu3dfe": Path(workdir) / "data" / "bu3dfe", "bu4dfe": Path(workdir) / "data" / "bu4dfe"}
    workers = min(2, os.cpu_count() or 1)
    for layout, writer in (("bu3dfe", write_bu3dfe_tree), ("bu4dfe", write_bu4dfe_tree)):
        if not roots[layout].is_dir():
            writer(roots[layout], cfg.synthetic_subjects, SyntheticConfig(seed=cfg.seed), num_workers=workers,
                   progress=False)  # fmt: skip
    return roots


def row_config(row: StudyRow, cfg, fold: int, roots: dict, workdir):
    """The training settings of `row` on `fold`: same recipe, folds and data for every row."""
    sequences = row.dataset == "synthetic4d"
    return dataclasses.replace(
        cfg, dataset=row.dataset, fold=fold, data_dir=str(roots["bu4dfe" if sequences else "bu3dfe"]),
        model_overrides=dict(row.overrides), exclude_words=list(ZERO_SHOT_WORDS.values()) if row.kind == "zero_shot" else [],
        train_intensities=None if sequences else cfg.train_intensities,
        test_intensities=None if sequences else cfg.test_intensities,
        output=str(Path(workdir) / "runs" / f"fold-{fold}" / row.name),
        cache_dir=str(Path(workdir) / "cache" / f"fold-{fold}"), **row.training_overrides,
    )  # fmt: skip


def _splits(cfg):
    from modeling_facet import FacetMeshImageProcessor, FacetVLMConfig
    from training.data import load_splits

    config = FacetVLMConfig.from_preset(cfg.preset, **cfg.model_overrides)
    return config, load_splits(cfg, FacetMeshImageProcessor.from_model_config(config), show_progress=False)


def _zero_shot(cfg, trained: dict) -> dict:
    """Test the model `train` saved with the zero-shot synonyms as class names."""
    import torch

    from modeling_facet import FacetVLMForExpressionRecognition, FacetVLMProcessor
    from modeling_facet.prompts import label_word
    from training.data import load_splits
    from training.train import evaluate_split

    model_dir = Path(cfg.output) / "model"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = FacetVLMForExpressionRecognition.from_pretrained(model_dir).to(device)
    processor = FacetVLMProcessor.from_pretrained(model_dir)
    test = load_splits(cfg, processor.image_processor, show_progress=False)["test"]
    words = [ZERO_SHOT_WORDS[name] for name in test.label_names]
    metrics = evaluate_split(model, processor, test, words, device)
    metrics["accuracy_with_training_label_names"] = trained["accuracy"]
    # Training named each class by its first word outside exclude_words: none of the zero-shot words (checked).
    metrics["words_in_training_class_prompts"] = [word for name, word in zip(test.label_names, words)
                                                  if label_word(name, cfg.exclude_words) == word]  # fmt: skip
    return metrics


def run_row(row: StudyRow, cfg) -> dict:
    """Train and test `row` with `cfg` (see [`row_config`]); the metrics of its test split."""
    from benchmarks.baselines import depth_logistic_regression, train_mvcnn
    from training.train import train

    if row.kind in ("facet", "zero_shot"):
        metrics = train(cfg)
        return _zero_shot(cfg, metrics) if row.kind == "zero_shot" else metrics
    config, splits = _splits(cfg)
    if row.kind == "depth_logreg":
        return depth_logistic_regression(splits["train"], splits["test"], config.views, config.channels)
    if row.kind == "mvcnn":
        return train_mvcnn(splits["train"], splits["test"], epochs=cfg.epochs, batch_size=cfg.batch_size,
                           learning_rate=cfg.learning_rate, seed=cfg.seed)  # fmt: skip
    raise ValueError(f"Unknown study row kind {row.kind!r}.")


def fold_test_subjects(cfg, roots: dict) -> dict:
    """Test subjects of `cfg.fold` in the static and in the sequence tree (the unrendered configs: no rendering)."""
    import datasets

    from datasets_scripts.synthetic import SyntheticFaces

    subjects = {}
    datasets.disable_progress_bars()
    for config_name, root in (("scans", roots["bu3dfe"]), ("sequences", roots["bu4dfe"])):
        builder = SyntheticFaces(config_name=config_name, data_dir=str(root), cache_dir=cfg.cache_dir,
                                 protocol=cfg.protocol, fold=cfg.fold, num_folds=cfg.num_folds, seed=cfg.seed)  # fmt: skip
        builder.download_and_prepare()
        subjects[config_name] = sorted(set(builder.as_dataset()["test"]["subject"]))
    datasets.enable_progress_bars()
    return subjects


def _same_people(a: list, b: list) -> bool:
    """BU-3DFE ids (F0001) and BU-4DFE ids (F001) name subject numbers alike: compare (letter, number)."""
    return {(s[0], int(s[1:])) for s in a} == {(s[0], int(s[1:])) for s in b}


def summarise(row: StudyRow, folds: list) -> dict:
    """Mean, std (ddof=0) and per-fold values of `row`'s metric over the folds run so far."""
    values = [fold["value"] for fold in folds]
    return {
        "name": row.name, "description": row.description, "kind": row.kind, "dataset": row.dataset,
        "metric": row.metric, "model_overrides": dict(row.overrides), "training_overrides": dict(row.training_overrides),
        "mean": float(np.mean(values)) if values else None, "std": float(np.std(values)) if values else None,
        "per_fold": values, "folds": folds, "wall_seconds": round(sum(fold["seconds"] for fold in folds), 1),
    }  # fmt: skip


def _fold_record(fold: int, metrics: dict, row: StudyRow, seconds: float) -> dict:
    record = {"fold": fold, "value": float(metrics[row.metric]), "seconds": round(seconds, 1),
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


def run_fold(fold: int, cfg, roots: dict, workdir, keep_work: bool = False, threads: int | None = None,
             rows=ROWS) -> dict:  # fmt: skip
    """`rows` on `fold`: its test subjects and one record per row (run in a worker process when `--workers` > 1,
    where `threads` caps torch's intra-op threads so that the workers share the cores instead of competing)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    subjects_of_fold = fold_test_subjects(row_config(ROWS[0], cfg, fold, roots, workdir), roots)
    subjects_of_fold["same_people"] = _same_people(subjects_of_fold["scans"], subjects_of_fold["sequences"])
    records = {}
    for row in rows:
        start = time.perf_counter()
        run_cfg = row_config(row, cfg, fold, roots, workdir)
        metrics = run_row(row, run_cfg)
        records[row.name] = _fold_record(fold, metrics, row, time.perf_counter() - start)
        if not keep_work:
            shutil.rmtree(run_cfg.output, ignore_errors=True)
        print(f"[fold {fold}] {row.name}: {row.metric} {records[row.name]['value']:.4f} "
              f"({records[row.name]['seconds']:.0f} s)", flush=True)  # fmt: skip
    if not keep_work:
        shutil.rmtree(Path(workdir) / "cache" / f"fold-{fold}", ignore_errors=True)
    return {"fold": fold, "test_subjects": subjects_of_fold, "records": records}


def run(quick: bool = False, subjects: int | None = None, folds: int | None = None, epochs: int | None = None,
        output=None, work_dir=None, keep_work: bool = False, workers: int = 1, rows=None) -> dict:  # fmt: skip
    """Run every row (or the `rows` named) on every fold, rewriting `output` (JSON) after each fold; returns the final
    results.

    With `workers` > 1 the folds run in that many processes, each with an equal share of the cores for torch: on
    the 2-core machine two single-threaded trainings process about 1.5x the samples per second of one two-threaded
    training (small preset: about 44 samples/s each against 58).
    """
    rows = select_rows(rows)
    defaults = QUICK if quick else FULL
    subjects, folds = subjects or defaults["subjects"], folds or defaults["folds"]
    epochs = epochs or defaults["epochs"]
    output = Path(output or RESULTS_DIR / "accuracy_study.json")
    workdir = Path(work_dir or tempfile.mkdtemp(prefix="facet-accuracy-study-"))
    started = time.perf_counter()
    cfg = study_config(subjects, folds, epochs, workdir)
    results = {
        "benchmark": "accuracy_study",
        "quick": quick,
        "complete": False,
        "settings": {
            "subjects": subjects, "folds": folds, "epochs": cfg.epochs, "preset": cfg.preset,
            "protocol": cfg.protocol, "learning_rate": cfg.learning_rate, "batch_size": cfg.batch_size,
            "test_intensities": cfg.test_intensities, "train_intensities": cfg.train_intensities, "seed": cfg.seed,
            "recipe": "training.demo.demo_config (subjects, epochs and folds replaced)",
            "zero_shot_words": ZERO_SHOT_WORDS, "std": "population (ddof=0) across folds", "workers": workers,
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
        results["rows"] = [summarise(row, [result["records"][row.name] for result in done]) for row in rows]
        results["wall_seconds"] = round(time.perf_counter() - started, 1)
        write_json(results, output, echo=False)

    if workers <= 1:
        for fold in range(folds):
            record(run_fold(fold, cfg, roots, workdir, keep_work, rows=rows))
    else:
        threads = max(1, (os.cpu_count() or 1) // workers)
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            jobs = [pool.submit(run_fold, fold, cfg, roots, workdir, keep_work, threads, rows) for fold in range(folds)]
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
    parser.add_argument("--quick", action="store_true",
                        help=f"CI-sized: {QUICK['subjects']} subjects, {QUICK['folds']} folds, 1 epoch, every row")
    parser.add_argument("--subjects", type=int, help=f"synthetic subjects (default {FULL['subjects']}, quick 6)")
    parser.add_argument("--folds", type=int, help=f"subject-independent folds (default {FULL['folds']}, quick 2)")
    parser.add_argument("--epochs", type=int, help="training epochs (default: the demo recipe's; quick 1)")
    parser.add_argument("--output", default=str(RESULTS_DIR / "accuracy_study.json"), help="JSON file to write")
    parser.add_argument("--work-dir", help="folder for the data, caches and runs (default: a temporary folder)")
    parser.add_argument("--keep-work", action="store_true", help="keep the trained models and rendered caches")
    parser.add_argument("--workers", type=int, default=1, help="folds run in parallel processes (default 1)")
    parser.add_argument("--rows", help="comma-separated row names to run (default: every row); use another --output")
    arguments = parser.parse_args(argv)
    results = run(**vars(arguments))
    for row in results["rows"]:
        print(f"{row['name']:>14}  {row['metric']:>8}  {row['mean']:.4f} +- {row['std']:.4f}  {row['per_fold']}")
    print(f"Wrote {arguments.output} ({results['wall_seconds']:.0f} s)")
    return results


if __name__ == "__main__":
    main()
