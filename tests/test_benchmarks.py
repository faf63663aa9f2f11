"""Benchmark suite structure: the report generator, the baselines, the accuracy-study rows and the suite runner.

No timings are asserted here; benchmarks/ measures speed."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import accuracy_study, pretraining_gain, report
from benchmarks.__main__ import BENCHMARKS, SPEED, selected
from benchmarks.baselines import (
    DEPTH_CNN_RECIPE, MultiviewCNN, depth_logistic_regression, frontal_depth_maps, frontal_depth_split, random_shift,
    train_depth_cnn, train_mvcnn,
)
from modeling_facet import FacetVLMConfig
from training.data import ExpressionSplit


REPO = Path(__file__).resolve().parents[1]
LABELS = ["anger", "disgust", "fear", "happiness", "sadness", "surprise"]
VIEWS = [[20.0, 0.0], [0.0, 0.0], [-20.0, 0.0]]
CHANNELS = ["shaded", "depth", "normals"]  # depth is channel 1 of 5


def tiny_split(subjects, samples_per_class: int = 2, seed: int = 0) -> ExpressionSplit:
    """Static 3-view, 5-channel, 16x16 samples whose frontal depth map carries the class (a bright row per class)."""
    rng = np.random.default_rng(seed)
    labels = np.tile(np.repeat(np.arange(len(LABELS)), samples_per_class), len(subjects))
    pixels = rng.normal(0.0, 0.3, size=(len(labels), 3, 5, 16, 16)).astype(np.float32)
    pixels[np.arange(len(labels)), 1, 1, labels + 1, :] += 3.0
    names = [subject for subject in subjects for _ in range(len(LABELS) * samples_per_class)]
    return ExpressionSplit(torch.from_numpy(pixels).half(), torch.from_numpy(labels), list(LABELS), subjects=names,
                           metadata=[{} for _ in names])  # fmt: skip


def test_frontal_depth_maps_take_the_depth_channel_of_the_frontal_view():
    split = tiny_split(["F0001"])
    maps = frontal_depth_maps(split, VIEWS, CHANNELS, pool=1)
    assert maps.shape == (len(split), 256)
    np.testing.assert_array_equal(maps, split.pixel_values[:, 1, 1].float().flatten(1).numpy())
    assert frontal_depth_maps(split, VIEWS, CHANNELS, pool=2).shape == (len(split), 64)
    with pytest.raises(ValueError, match="no depth channel"):
        frontal_depth_maps(split, VIEWS, ["shaded", "normals"], pool=1)


def test_depth_logistic_regression_learns_a_depth_signal():
    train, test = tiny_split(["F0001", "F0002", "M0001"], seed=0), tiny_split(["M0002"], seed=1)
    metrics = depth_logistic_regression(train, test, VIEWS, CHANNELS, pool=1)
    assert metrics["accuracy"] >= 0.9  # the class is a bright depth row: separable
    assert metrics["chosen_C"] in (1e-3, 1e-2, 1e-1, 1.0)
    assert sum(map(sum, metrics["confusion_matrix"])) == metrics["test_samples"] == len(test)


def test_mvcnn_trains_and_averages_view_logits():
    train, test = tiny_split(["F0001", "M0001"]), tiny_split(["M0002"], seed=1)
    metrics = train_mvcnn(train, test, epochs=2, batch_size=8)
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["views"] == 3
    assert sum(map(sum, metrics["confusion_matrix"])) == len(test)
    model = MultiviewCNN(in_channels=5, num_classes=6).eval()
    pixels = torch.randn(2, 3, 5, 16, 16)
    per_view = torch.stack([model(pixels[:, v : v + 1]) for v in range(3)], dim=1)
    torch.testing.assert_close(model(pixels), per_view.mean(dim=1))


def test_depth_cnn_sees_only_the_frontal_depth_map_and_learns_it():
    train, test = tiny_split(["F0001", "F0002", "M0001"], seed=0), tiny_split(["M0002"], seed=1)
    reduced = frontal_depth_split(train, VIEWS, CHANNELS, size=8)
    assert tuple(reduced.pixel_values.shape) == (len(train), 1, 1, 8, 8)
    torch.testing.assert_close(reduced.pixel_values.float().mean(dim=(1, 2, 3, 4)),
                               train.pixel_values[:, 1, 1].float().mean(dim=(1, 2)), atol=1e-2, rtol=1e-2)  # fmt: skip
    recipe = dataclasses.replace(DEPTH_CNN_RECIPE, epochs=30, batch_size=8)  # its size, shifts, lr and decay
    metrics = train_depth_cnn(train, test, VIEWS, CHANNELS, recipe)
    assert metrics["accuracy"] >= 0.8 and metrics["train_accuracy"] >= 0.8  # the class is a bright depth row
    assert metrics["views"] == 1 and metrics["input"] == "frontal depth map, 64x64"
    assert metrics["recipe"] == dataclasses.asdict(recipe) and metrics["epochs"] == 30


def test_random_shift_translates_each_image_by_at_most_max_shift_with_edges_repeated():
    images = torch.arange(2 * 3 * 36, dtype=torch.float32).view(2, 3, 1, 6, 6)
    assert random_shift(images, 0, torch.Generator()) is images
    shifted = random_shift(images, 1, torch.Generator().manual_seed(0))
    assert shifted.shape == images.shape
    padded = torch.nn.functional.pad(images.flatten(0, 2)[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
    crops = [{padded[i, y : y + 6, x : x + 6] for y in range(3) for x in range(3)} for i in range(6)]
    for i, image in enumerate(shifted.flatten(0, 2)):
        assert any(torch.equal(image, crop) for crop in crops[i])
    offsets = {tuple(torch.nonzero(image == images.flatten(0, 2)[i, 2, 2])[0].tolist())
               for i, image in enumerate(random_shift(images, 1, torch.Generator().manual_seed(1)).flatten(0, 2))}
    assert len(offsets) > 1  # every image draws its own offset


def test_the_study_trains_the_depth_cnn_with_its_own_recipe_not_facet_vlms(monkeypatch, tmp_path):
    """Whatever FACET-VLM's step budget and learning rate, the depth-CNN row trains with DEPTH_CNN_RECIPE (model
    seed from the run) and its JSON row records that recipe."""
    import benchmarks.baselines

    calls = []
    split = tiny_split(["F0001"])
    config = FacetVLMConfig.from_preset("tiny")
    monkeypatch.setattr(accuracy_study, "_splits", lambda cfg: (config, {"train": split, "test": split}))
    monkeypatch.setattr(benchmarks.baselines, "train_depth_cnn",
                        lambda *args, **kwargs: calls.append((args, kwargs)) or {"train_accuracy": 1.0})  # fmt: skip
    row = next(row for row in accuracy_study.ROWS if row.kind == "depth_cnn")
    for steps, learning_rate in ((7, 1e-4), (3000, 0.5)):
        cfg = accuracy_study.study_config(subjects=10, folds=5, steps=steps, workdir=tmp_path)
        accuracy_study.run_row(row, dataclasses.replace(cfg, learning_rate=learning_rate, seed=3))
    assert [call[1] for call in calls] == [{"seed": 3}] * 2  # the default recipe, nothing from the FACET-VLM cfg
    assert calls[0][0][2:] == (config.views, config.channels)
    recipe = accuracy_study.summarise(row, [])["recipe"]
    assert recipe == dataclasses.asdict(DEPTH_CNN_RECIPE) and recipe["learning_rate"] == 2e-3
    assert "recipe" not in accuracy_study.summarise(accuracy_study.ROWS[0], [])


def test_baselines_refuse_multi_label_and_sequence_splits():
    split = tiny_split(["F0001", "M0001"])
    multi = ExpressionSplit(split.pixel_values, torch.zeros(len(split), 4), ["AU1", "AU2", "AU4", "AU6"],
                            subjects=split.subjects)  # fmt: skip
    with pytest.raises(ValueError, match="multi-hot"):
        train_mvcnn(multi, multi, epochs=1)
    sequences = ExpressionSplit(split.pixel_values[:, None], split.labels, LABELS, subjects=split.subjects)
    with pytest.raises(ValueError, match="static scans"):
        depth_logistic_regression(sequences, sequences, VIEWS, CHANNELS)


def test_study_rows_cover_every_required_comparison():
    rows = {row.name: row for row in accuracy_study.ROWS}
    overrides = [row.overrides for row in rows.values()]
    for required in ({"cvsa": "mean"}, {"mtgf": False}, {"loss_weight_cons": 0.0}, {"loss_weight_gf": 0.0},
                     {"views": [[0.0, 0.0]]}):  # fmt: skip
        assert required in overrides
    five = next(o["views"] for o in overrides if len(o.get("views", [])) == 5)
    assert sorted(yaw for yaw, _ in five) == [-40.0, -20.0, 0.0, 20.0, 40.0]
    assert rows["facet_vlm"].overrides == {} and rows["facet_vlm"].kind == "facet"
    assert {row.kind for row in rows.values()} == {"facet", "zero_shot", "depth_logreg", "depth_cnn", "mvcnn"}
    assert {(row.dataset, row.metric) for row in rows.values() if row.dataset != "synthetic"} == {
        ("synthetic4d", "accuracy"), ("synthetic_aus", "mean_f1")}
    assert set(accuracy_study.ZERO_SHOT_WORDS) == set(LABELS)
    for override in overrides:  # every ablation is a valid model config
        FacetVLMConfig.from_preset("tiny", **override)


def test_a_killed_runs_partial_tree_is_written_again(tmp_path, monkeypatch):
    from datasets_scripts import synthetic_faces

    written = []
    for layout in ("bu3dfe", "bu4dfe"):
        monkeypatch.setattr(synthetic_faces, f"write_{layout}_tree", lambda root, *args, **kwargs: written.append(root))
    (tmp_path / "data" / "bu3dfe" / "F0001").mkdir(parents=True)  # a run killed while writing its people
    (tmp_path / "data" / "bu4dfe").mkdir(parents=True)
    (tmp_path / "data" / "bu4dfe" / synthetic_faces.LABELS_FILENAME).write_text("file\n")  # written last: complete
    cfg = accuracy_study.study_config(subjects=10, folds=5, steps=7, workdir=tmp_path)
    accuracy_study.write_trees(cfg, tmp_path)
    assert written == [tmp_path / "data" / "bu3dfe"]


def test_every_row_runs_on_the_same_folds_seed_and_recipe(tmp_path):
    cfg = accuracy_study.study_config(subjects=10, folds=5, steps=7, workdir=tmp_path)
    roots = {"bu3dfe": tmp_path / "a", "bu4dfe": tmp_path / "b"}
    configs = [accuracy_study.row_config(row, cfg, 3, 1, roots, tmp_path) for row in accuracy_study.ROWS]
    shared = {(c.fold, c.num_folds, c.seed, c.data_seed, c.protocol, c.synthetic_subjects, c.max_steps,
               c.learning_rate, c.batch_size, c.preset) for c in configs}  # fmt: skip
    assert shared == {(3, 5, 1, cfg.data_seed, cfg.protocol, 10, 7, cfg.learning_rate, cfg.batch_size, cfg.preset)}
    assert len({c.output for c in configs}) == len(configs)
    every_part = {"cvsa": "attention", "mtgf": True, "loss_weight_cons": 0.1, "loss_weight_gf": 0.1}
    for row, c in zip(accuracy_study.ROWS, configs):  # every part on, but for the one a row removes
        assert c.model_overrides == {**every_part, **row.overrides}
    assert configs[0].model_overrides == every_part
    zero_shot = next(c for row, c in zip(accuracy_study.ROWS, configs) if row.kind == "zero_shot")
    assert sorted(zero_shot.exclude_words) == sorted(accuracy_study.ZERO_SHOT_WORDS.values())
    augment_views = {row.name: c.augment_views for row, c in zip(accuracy_study.ROWS, configs)}
    assert augment_views.pop("view_augmentation") is True and set(augment_views.values()) == {cfg.augment_views}


def _runs(values, seconds=1.0):
    return [{"fold": i // 3, "seed": i % 3, "value": v, "train_value": 1.0, "seconds": seconds}
            for i, v in enumerate(values)]  # fmt: skip


def test_summarise_gives_mean_std_train_and_the_paired_difference():
    full, ablation = accuracy_study.ROWS[0], next(row for row in accuracy_study.ROWS if row.name == "no_mtgf")
    reference = _runs([0.8, 0.7, 0.9, 0.6, 0.8, 0.7])
    summary = accuracy_study.summarise(full, reference, reference)
    assert summary["per_run"] == [0.8, 0.7, 0.9, 0.6, 0.8, 0.7] and summary["wall_seconds"] == 6.0
    assert summary["mean"] == pytest.approx(0.75) and summary["train_mean"] == 1.0
    assert "paired_difference" not in summary and summary["model_overrides"] == accuracy_study.model_overrides(full)
    # Always 5 points lower on the same (fold, seed): a loss, however much the folds vary.
    lower = accuracy_study.summarise(ablation, _runs([0.75, 0.66, 0.85, 0.55, 0.75, 0.64]), reference)
    paired = lower["paired_difference"]
    assert paired["pairs"] == 6 and paired["mean"] == pytest.approx(-0.05, abs=1e-9) and paired["verdict"] == "loss"
    assert paired["ci95"][0] < -0.05 < paired["ci95"][1] < 0
    noisy = accuracy_study.summarise(ablation, _runs([0.9, 0.6, 0.9, 0.5, 0.9, 0.6]), reference)
    assert noisy["paired_difference"]["verdict"] == "no measurable effect"
    alone = accuracy_study.summarise(ablation, _runs([0.9]), reference)
    assert alone["paired_difference"]["verdict"] == "too few pairs"
    # Two equal differences (accuracy moves in steps of one test scan) give a zero-width t interval: no verdict.
    two = accuracy_study.paired_difference(_runs([0.85, 0.75]), _runs([0.8, 0.7]))
    assert two["pairs"] == 2 and two["mean"] == pytest.approx(0.05)
    assert two["verdict"] == "too few pairs" and two["ci95"] is None
    # Three or more equal differences have no spread either: the t interval would claim certainty.
    same = accuracy_study.paired_difference(_runs([0.85, 0.75, 0.95]), _runs([0.8, 0.7, 0.9]))
    assert same["pairs"] == 3 and same["mean"] == pytest.approx(0.05)
    assert same["verdict"] == "no spread between pairs" and same["ci95"] is None


def _fixture_results(folder: Path) -> None:
    parsing = {"quick": True, "wrl": {"vertices": 8010, "load_scan_ms": 10.0, "naive_reader_ms": 60.0,
               "speedup_vs_naive": 6.0}, "bnt": {"grid": [220, 200], "load_scan_ms": 4.0, "reference_reader_ms": 2.0,
               "load_scan_over_reference": 2.0}, "environment": {"cpu_model": "Test CPU", "cpu_count": 2,
               "load_average_1_5_15min": [1.5, 1.0, 1.0], "torch": "2.x", "command": "python -m benchmarks.bench_parsing",
               "git_commit": "0123456789abcdef", "uncommitted_changes": ["modeling_facet/rendering.py"]}}  # fmt: skip
    reference = _runs([0.5, 0.5, 0.5])
    rows = [accuracy_study.summarise(row, _runs([0.5, 0.4, 0.45] if row.name == "no_mtgf" else [0.5, 0.5, 0.5]),
                                     reference)
            for row in accuracy_study.ROWS]  # fmt: skip
    rows[-1]["runs"][0]["words_in_training_class_prompts"] = ["disgusted"]
    study = {"quick": False, "complete": True, "wall_seconds": 12.0, "rows": rows,
             "settings": {"subjects": 6, "folds": 2, "folds_run": 1, "seeds": 2, "steps": 4, "preset": "small",
                          "batch_size": 32, "learning_rate": 0.002, "test_intensities": [3, 4], "recipe": "demo",
                          "paired_difference": "row minus facet_vlm", "zero_shot_words": accuracy_study.ZERO_SHOT_WORDS},
             "environment": {"cpu_model": "Test CPU", "cpu_count": 2, "command": "python -m benchmarks.accuracy_study"}}  # fmt: skip
    default = _runs([0.8, 0.8])
    pretraining = {"quick": False, "complete": True, "pretrained": "hf-cache/model", "pretraining_seconds": 360.0,
                   "arms": {"default": pretraining_gain._summary("the default command", default, None),
                            "scratch": pretraining_gain._summary("from scratch", _runs([0.6, 0.7]), default)},
                   "settings": {"subjects": 60, "folds": 10, "run_folds": 1, "seeds": 2,
                                "target_generator": {"shape_family": "b", "grid_spacing_mm": 2.4, "seed": 7},
                                "command": "facet-vlm train --dataset bu3dfe", "paired_difference": "arm minus default"},
                   "environment": {}}  # fmt: skip
    (folder / "parsing.json").write_text(json.dumps(parsing))
    (folder / "accuracy_study.json").write_text(json.dumps(study))
    (folder / "pretraining.json").write_text(json.dumps(pretraining))
    pretraining["arms"] = {"default": pretraining["arms"]["default"],
                           "no_l_gf": pretraining_gain._summary("default start, without L_gf", _runs([0.7, 0.8]), default)}
    (folder / "pretraining_ablation.json").write_text(json.dumps(pretraining))
    demo = {"quick": False, "wall_seconds": 331.7, "train_seconds": 245.1, "budget_seconds": 900, "accuracy": 0.925,
            "macro_f1": 0.925, "target_accuracy": 0.9, "test_samples": 240, "environment": {}}  # fmt: skip
    (folder / "demo.json").write_text(json.dumps(demo))
    loading = {"quick": False, "rows": 6480, "float32_gb": 5.56, "environment": {},
               "chunked": {"seconds": 10.0, "peak_increase_gb": 2.0, "held_gb": 1.67},
               "all_at_once": {"seconds": 15.0, "peak_increase_gb": 6.0, "held_gb": 1.67}}  # fmt: skip
    (folder / "loading.json").write_text(json.dumps(loading))
    liveness = {"run": "outputs/demo", "test_samples": 240,
                "config": {"cvsa": "attention", "mtgf": True, "views": [[0, 0], [20, 0], [-20, 0]]},
                "cvsa": {"mean": [0.4, 0.3, 0.3], "std_across_samples": [0.05, 0.02, 0.03],
                         "mean_abs_deviation_from_uniform": 0.06,
                         "blanked": [{"view": v, "weight_usual": 0.4 - 0.1 * bool(v), "weight_when_blanked": 0.1}
                                     for v in range(3)]},
                "mtgf": {"accuracy": 0.9, "random_text_keys": {"accuracy": 0.5, "predictions_changed": 0.45,
                                                               "mean_cosine_to_real_h": 0.8},
                         "mean_text_key": {"accuracy": 0.85, "predictions_changed": 0.1, "mean_cosine_to_real_h": 0.95},
                         "skipped": {"accuracy": 0.7, "predictions_changed": 0.25, "mean_cosine_to_real_h": 0.9}},
                "scalars": {"logit_scale": [14.0, 20.0, 30.0], "margin": [0.2, 0.3, 0.35], "cvsa_temperature": [1.0, 1.5, 2.0],
                            "temporal_temperature": []},
                "loss_gradients": {"weights": {"ce": 1.0, "itc": 0.5, "cons": 0.1, "gf": 0.1},
                                   "gradient_norm": {"ce": 2.0, "itc": 1.0, "cons": 0.2, "gf": 0.1},
                                   "relative_to_ce": {"ce": 1.0, "itc": 0.5, "cons": 0.1, "gf": 0.05}},
                "environment": {"cpu_model": "Test CPU", "cpu_count": 2,
                                "command": "python -m benchmarks.liveness --run outputs/demo"}}  # fmt: skip
    (folder / "liveness.json").write_text(json.dumps(liveness))
    liveness.update(run="runs/parts-on", mtgf=None, note="Trained with CVSA and MTGF on.")
    (folder / "liveness_parts_on.json").write_text(json.dumps(liveness))


def test_report_writes_the_summary_and_rewrites_only_the_readme_section(tmp_path):
    _fixture_results(tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text("# Project\n\nIntro.\n\n## Usage\n\nText.\n")
    markdown = report.write_report(tmp_path, readme=readme)
    summary = (tmp_path / "SUMMARY.md").read_text()
    assert markdown in summary and "Test CPU (2 cores)" in summary
    assert "Code: commit 0123456789; files with uncommitted changes at run time: modeling_facet/rendering.py." in summary
    assert "| Scan parsing (quick) | .wrl, BU-3DFE size (8,010 vertices): load_scan | 10.00 ms |" in summary
    assert "6.00x faster" in summary and "`python -m benchmarks.bench_parsing`" in summary
    for row in accuracy_study.ROWS:
        if row.name != "no_mtgf":
            assert f"| {row.description} | {row.metric} | 0.500 | 0.000 | 1.000 |" in summary
    assert "| without MTGF | accuracy | 0.450 | 0.041 | 1.000 | -5.0 points [-17.4, +7.4]: no measurable effect | 3 |" \
        in summary
    assert "Of these, disgusted appeared in the training class prompts" in summary
    assert "shape family 'b', 2.4 mm mesh spacing, seed 7); the pretrained model (`hf-cache/model`, 360 s" in summary
    assert "| Main job | `facet-vlm demo`: whole command, wall time | 332 s (training 245 s) | budget 900 s | 0.37x" in summary
    assert "| 92.5 % (macro F1 0.925) | target 90 % | +2.5 points |" in summary
    assert "| 6,480 samples (5.56 GB of float32): time, chunked | 10.00 s | all rows at once 15.00 s | 1.50x |" in summary
    assert "(holding 1.67 GB of float16), chunked | +2.00 GB | all rows at once +6.00 GB | 3.00x |" in summary
    assert "| from scratch | 0.650 | 0.050 | 1.000 | -15.0 points: too few pairs | 2 |" in summary  # no interval
    assert summary.count("| the default command | 0.800 | 0.000 | 1.000 | - | 2 |") == 2  # the reference: no pairing
    assert "`pretraining_ablation.json`" in summary and "| default start, without L_gf | 0.750 |" in summary
    assert "(`liveness_parts_on.json`): what each part of the trained `runs/parts-on` model does" in summary
    assert "--run outputs/demo` Note: Trained with CVSA and MTGF on." in summary
    assert "| view (yaw, pitch) | mean weight | spread across samples | weight when the view is blanked |" in summary
    assert "| (20, 0) | 0.300 | 0.020 | 0.100 |" in summary
    assert "| random unit vectors as text keys | 0.500 | 45.0 % | 0.800 |" in summary
    assert "| logit scale exp(s) | 14.00 | 30.00 |" in summary and "| L_gf | 0.1 | 0.100 | 0.050 |" in summary
    text = readme.read_text()
    assert text.startswith("# Project\n\nIntro.\n\n## Usage\n\nText.\n\n## Benchmark results\n")
    assert text.count(report.START_MARKER) == 1 and text.count(report.END_MARKER) == 1

    (tmp_path / "parsing.json").unlink()
    report.write_report(tmp_path, readme=readme)
    again = readme.read_text()
    assert again.count(report.START_MARKER) == 1 and "Scan parsing" not in again and "## Usage" in again


def test_report_refuses_a_readme_with_one_marker(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# Project\n{report.START_MARKER}\n")
    with pytest.raises(ValueError, match="only one of the markers"):
        report.update_readme(readme, "table")


def test_suite_selection_by_names_and_groups():
    assert selected(None) == list(BENCHMARKS)
    assert selected("speed") == list(SPEED)
    assert selected("accuracy, parsing") == ["parsing", "accuracy"]
    with pytest.raises(SystemExit, match="Unknown benchmark 'nope'"):
        selected("parsing,nope")


def test_bench_subcommand_starts_the_suite(monkeypatch):
    from training.cli import main

    started = []
    monkeypatch.setattr("os.execv", lambda path, argv: started.append(argv))
    main(["bench", "--quick", "--only", "parsing", "--folds", "5"])
    assert started == [[sys.executable, "-m", "benchmarks", "--quick", "--only", "parsing", "--folds", "5"]]


def test_quick_parsing_run_writes_valid_json(tmp_path):
    subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--only", "parsing", "--output-dir", str(tmp_path)],
                   cwd=REPO, check=True, capture_output=True)  # fmt: skip
    results = json.loads((tmp_path / "parsing.json").read_text())
    assert results["quick"] and results["wrl"]["load_scan_ms"] > 0 and results["bnt"]["reference_reader_ms"] > 0
    assert results["environment"]["cpu_count"] >= 1 and len(results["environment"]["load_average_1_5_15min"]) == 3
    assert "Scan parsing (quick)" in (tmp_path / "SUMMARY.md").read_text()


def test_quick_demo_benchmark_runs_the_main_job(tmp_path):
    # `facet-vlm demo` end to end on 6 subjects for 1 epoch: data, training, evaluation, saving, classifying a scan.
    # --keep-run keeps the run with its data cache, which benchmarks/liveness.py reads.
    subprocess.run([sys.executable, "-m", "benchmarks.bench_demo", "--quick", "--output", str(tmp_path / "demo.json"),
                    "--keep-run", str(tmp_path / "run")], cwd=REPO, check=True, capture_output=True)  # fmt: skip
    assert (tmp_path / "run" / "model" / "config.json").is_file() and any((tmp_path / "run" / "cache").iterdir())
    results = json.loads((tmp_path / "demo.json").read_text())
    assert results["quick"] and results["wall_seconds"] > results["train_seconds"] > 0
    assert 0.0 <= results["accuracy"] <= 1.0 and results["test_samples"] > 0
    assert results["classified"]["true_label"] == "happiness" and results["classified"]["prediction"][0]["score"] > 0


def test_loading_benchmark_converts_one_split_both_ways(monkeypatch):
    from benchmarks import bench_loading

    monkeypatch.setattr(bench_loading, "ROWS", {"quick": 64})
    monkeypatch.setattr(bench_loading, "REPEATS", 1)
    results = bench_loading.run(quick=True)
    held = round(64 * np.prod(bench_loading.SAMPLE_SHAPE) * 2 / 2**30, 3)
    assert results["rows"] == 64 and results["float32_gb"] >= 2 * held - 0.01
    for way in ("chunked", "all_at_once"):
        assert results[way]["held_gb"] == held and results[way]["seconds"] > 0
        assert results[way]["peak_increase_gb"] >= held - 0.005  # the result itself is anonymous memory
    assert results["time_ratio"] > 0 and results["peak_ratio"] > 0


def test_study_rows_can_be_selected_by_name():
    assert accuracy_study.select_rows(None) == accuracy_study.ROWS
    chosen = accuracy_study.select_rows("zero_shot, facet_vlm_4d")
    assert [row.name for row in chosen] == ["facet_vlm_4d", "zero_shot"]  # study order
    with pytest.raises(ValueError, match="Unknown study rows"):
        accuracy_study.select_rows("facet_vlm,nope")


@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory):
    """Two tiny trained runs (every part; CVSA mean without MTGF) on 4 synthetic subjects, sharing one cache."""
    from training.train import TrainConfig, train

    root = tmp_path_factory.mktemp("liveness")
    runs = {}
    for name, overrides in (("full", {}), ("plain", {"cvsa": "mean", "mtgf": False})):
        train(TrainConfig(dataset="synthetic", protocol="all", synthetic_subjects=4, num_folds=2, preset="tiny",
                          max_steps=3, batch_size=8, output=str(root / name), cache_dir=str(root / "cache"),
                          model_overrides=overrides))  # fmt: skip
        runs[name] = root / name
    return runs


def test_liveness_report_measures_each_part(trained_runs, tmp_path):
    from benchmarks import liveness

    full = liveness.run(trained_runs["full"], tmp_path / "full.json", batches=1)
    assert json.loads((tmp_path / "full.json").read_text())["benchmark"] == "liveness"
    cvsa = full["cvsa"]
    assert len(cvsa["mean"]) == 3 and sum(cvsa["mean"]) == pytest.approx(1.0) and max(cvsa["std_across_samples"]) > 0
    assert [entry["view"] for entry in cvsa["blanked"]] == [0, 1, 2]
    for name in ("random_text_keys", "mean_text_key", "skipped"):
        assert 0 <= full["mtgf"][name]["predictions_changed"] <= 1 and full["mtgf"][name]["mean_cosine_to_real_h"] <= 1 + 1e-6
    # The tiny text tower embeds every prompt alike, so only random keys and skipping MTGF move h here.
    assert full["mtgf"]["random_text_keys"]["mean_cosine_to_real_h"] < 0.9999
    assert full["mtgf"]["skipped"]["mean_cosine_to_real_h"] < 0.9999
    assert len(full["scalars"]["margin"]) >= 1 and len(full["scalars"]["cvsa_temperature"]) >= 1
    gradients = full["loss_gradients"]
    assert gradients["relative_to_ce"]["ce"] == pytest.approx(1.0) and gradients["gradient_norm"]["gf"] > 0
    plain = liveness.run(trained_runs["plain"], tmp_path / "plain.json", batches=1)
    assert plain["mtgf"] is None and plain["cvsa"]["mean_abs_deviation_from_uniform"] == pytest.approx(0.0, abs=1e-6)
    assert max(plain["cvsa"]["std_across_samples"]) == pytest.approx(0.0, abs=1e-6)
