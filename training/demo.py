"""The main job (`facet-vlm demo`): generate the synthetic benchmark, train the small preset on CPU, evaluate on
held-out subjects, save a `from_pretrained`-loadable model, and classify one held-out scan with it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from modeling_facet.pipeline_facet import load_pipeline

from .config import DEMO_CONFIG, TrainConfig
from .train import train


def demo_config(output, num_subjects: int = 100, epochs: int | None = None, cache_dir=None,
                overwrite_output: bool = False) -> TrainConfig:  # fmt: skip
    """The demo recipe of training/configs/demo.yaml (synthetic BU-3DFE-layout faces, 5 subject-independent folds,
    fold 0 holding 20 % of the subjects out, every intensity in training, intensities 3-4 in the test split as in
    BU-3DFE's standard protocol), written to `output`, with its data cache in `cache_dir` (default `output/cache`)."""
    output = Path(output)
    cache_dir = output / "cache" if cache_dir is None else cache_dir
    overrides = dict(output=str(output), cache_dir=str(cache_dir), synthetic_subjects=num_subjects,
                     overwrite_output=overwrite_output)  # fmt: skip
    if epochs:
        overrides["epochs"] = epochs
    return TrainConfig.from_yaml(DEMO_CONFIG, **overrides)


def held_out_scan(cfg: TrainConfig) -> tuple[str, str]:
    """A happiness scan (intensity 4) of a test subject of the demo fold, with its true label."""
    import datasets

    from datasets_scripts.synthetic import SyntheticFaces

    builder = SyntheticFaces(config_name="scans", cache_dir=cfg.cache_dir, protocol=cfg.protocol, fold=cfg.fold,
                             num_folds=cfg.num_folds, seed=cfg.data_seed, num_subjects=cfg.synthetic_subjects,
                             data_seed=cfg.data_seed)  # fmt: skip
    datasets.disable_progress_bars()  # a second "Generating train split" bar (file paths only) would read as a rerun
    try:
        builder.download_and_prepare()
    finally:
        datasets.enable_progress_bars()
    test = builder.as_dataset()["test"]
    names = test.features["expression"].names
    for row in test:
        if names[row["expression"]] == "happiness" and row["intensity"] == 4:
            return row["scan_path"], "happiness"
    row = test[0]
    return row["scan_path"], names[row["expression"]]


def copy_scan(scan: str, folder: Path) -> str:
    """Copies `scan` and the files next to it with the same stem (its landmarks) into `folder`; the copy's path."""
    folder.mkdir(parents=True, exist_ok=True)
    source = Path(scan)
    for sibling in source.parent.glob(f"{source.stem}.*"):
        shutil.copy2(sibling, folder / sibling.name)
    return str(folder / source.name)


def folder_bytes(folder) -> int:
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(folder) for name in names)


def run_demo(output="outputs/demo", num_subjects: int = 100, epochs: int | None = None, cache_dir=None,
             keep_cache: bool = False, overwrite_output: bool = False) -> dict:  # fmt: skip
    """Runs the main job into `output`. The data cache (generated scans and rendered views, about 2.9 GB for 100
    subjects) goes to `cache_dir`, default `output/cache`, which is removed at the end unless `keep_cache`; a
    `cache_dir` of the caller's is always kept. `output` may hold an earlier demo run with other settings only with
    `overwrite_output` (training/run_folder.py)."""
    cfg = demo_config(output, num_subjects, epochs, cache_dir, overwrite_output)
    print(f"FACET-VLM demo: generating {num_subjects} synthetic people and rendering their views into {cfg.cache_dir} "
          f"(once), then training and evaluating into {cfg.output}.", flush=True)  # fmt: skip
    metrics = train(cfg)
    model_dir = Path(cfg.output) / "model"
    scan, truth = held_out_scan(cfg)
    scan = copy_scan(scan, Path(cfg.output) / "held_out_scan")  # outlives the cache
    scores = load_pipeline(model_dir)(scan, candidate_labels=metrics["labels"])  # as `facet-vlm predict` does
    summary = {
        "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"], "test_samples": metrics["num_samples"],
        "train_seconds": round(metrics["train_seconds"], 1), "confusion_matrix_png": str(Path(cfg.output) / "confusion_matrix.png"),
        "metrics_json": str(Path(cfg.output) / "metrics.json"), "model": str(model_dir),
        "classified_scan": scan, "true_label": truth, "prediction": scores[:3],
    }  # fmt: skip
    (Path(cfg.output) / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\nSubject-independent accuracy on held-out subjects (6 expressions, intensities 3-4): "
          f"{metrics['accuracy']:.1%} (macro F1 {metrics['macro_f1']:.3f}, {metrics['num_samples']} scans)")  # fmt: skip
    print(f"Confusion matrix: {summary['confusion_matrix_png']}")
    print(f"Model (from_pretrained-loadable): {model_dir}")
    print(f"Classified {scan} (true: {truth}): " + ", ".join(f"{s['label']} {s['score']:.2f}" for s in scores[:3]))
    if cache_dir is None and not keep_cache:
        size = folder_bytes(cfg.cache_dir)
        shutil.rmtree(cfg.cache_dir)
        print(f"Removed the data cache {cfg.cache_dir} ({size / 1e9:.1f} GB of generated scans and rendered views); "
              "--keep-cache keeps it for another run.")  # fmt: skip
    return summary
