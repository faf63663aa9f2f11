"""What the default start of `facet-vlm train` adds on faces the generator never made: the default command
(`--dataset bu3dfe --protocol standard`, which starts from the synthetic-pretrained model, training/pretraining.py)
against the same command with `--init-from none`, beside the depth-CNN baseline, and the default with each part it
leaves off put back (mixed view augmentation, L_cons, L_gf), another learning rate, frozen vision blocks, early
stopping on held-out training people, more synthetic replay or none, mirrored scans, a start pretrained on the main
job's 100 synthetic people instead of the default start's `PRETRAINING_SUBJECTS` (training/pretraining.py), all on the
same subject-independent folds and model seeds.

The target is a BU-3DFE-layout tree written from the generator's transfer target
(`SyntheticConfig.transfer_target`: shape family c, which the pretraining data (families a and b) never drew, and a
denser mesh), and
with another seed, so that neither its people nor its shape basis were seen in pretraining: the transfer measurement
of issue 14. `--layout bu4dfe` writes the same generator's people as BU-4DFE-layout sequences instead, to measure the
4D default (`--dataset bu4dfe`) the same way, without the depth CNN (it reads static scans). Each arm's runs pair
with the default arm's on the same (fold, seed): the paired difference has a 95 % t interval, as in the accuracy
study. On each fold's test people, the synthetic-pretrained start (not fine-tuned) and
every arm's models are also tested zero-shot: prompted with the label names, with synonyms from the prompt
table, and with words no training prompt held (`WORD_SETS`).

Usage: python -m benchmarks.pretraining_gain --output FILE.json [--quick] [--subjects N] [--folds K]
    [--run-folds R] [--seeds S] [--first-seed N] [--arms default,scratch,...] [--target-seed N]
    [--layout bu3dfe|bu4dfe] [--work-dir DIR]

The first run builds the synthetic-pretrained model into the HF cache (about 11 minutes on the 2-core machine, 28
on a slower one); each default-recipe run then takes about 4-6 minutes there with its zero-shot tests (it
replays as many pretraining scans as it trains on; about 3 without, about 9 with two per scan), so one fold x 3 seeds
of every arm take about four hours. The 100-people arm first builds its own start (about 4 minutes there).
"""

from __future__ import annotations

import os


os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `facet-vlm` does; read when torch starts OpenMP

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from benchmarks.accuracy_study import ZERO_SHOT_WORDS, paired_difference  # noqa: E402
from benchmarks.common import load_average, write_json  # noqa: E402


TARGET_SEED = 7  # the pretraining data uses the recipe's seed, 42
# The target tree's layout, also the `--dataset` that reads it. bu4dfe measures the 4D default: sequences, which no
# arm can replay synthetic scans into and the depth CNN cannot read.
LAYOUTS = ("bu3dfe", "bu4dfe")
QUICK = {"subjects": 6, "folds": 2, "run_folds": 1, "seeds": 1, "epochs": 1}
FULL = {"subjects": 60, "folds": 10, "seeds": 3, "epochs": None}  # BU-3DFE's size; the default epochs
# Arm: (description, its TrainConfig fields besides the default command's). The other arms fine-tune from the default
# arm's pretrained model (so only the fine-tuning changes), unless they set `init_from: auto` to start from their own:
# a part of the method that the defaults leave off is measured by putting it back.
PUT_BACK_LOSS_WEIGHT = 0.1  # L_cons or L_gf, when an arm puts one back
ARMS = {
    "default": ("the default command (synthetic-pretrained start)", {}),
    "scratch": ("`--init-from none` (from scratch)", {"init_from": "none"}),
    "view_augmentation": ("default start, `--augment-views`", {"augment_views": True}),
    "l_cons": (f"default start, with L_cons (weight {PUT_BACK_LOSS_WEIGHT})",
               {"model_overrides": {"loss_weight_cons": PUT_BACK_LOSS_WEIGHT}}),
    "l_gf": (f"default start, with L_gf (weight {PUT_BACK_LOSS_WEIGHT})",
             {"model_overrides": {"loss_weight_gf": PUT_BACK_LOSS_WEIGHT}}),
    "learning_rate_5e-4": ("default start, `--learning-rate 5e-4`", {"learning_rate": 5e-4}),
    "learning_rate_2e-4": ("default start, `--learning-rate 2e-4`", {"learning_rate": 2e-4}),
    "frozen_stem_stage1": ("default start, `--freeze-vision-blocks 2` (stem and first stage)",
                           {"freeze_vision_blocks": 2}),
    "frozen_to_stage3": ("default start, `--freeze-vision-blocks 4` (all but the last stage)",
                         {"freeze_vision_blocks": 4}),
    "frozen_vision_tower": ("default start, `--freeze-vision-blocks 5` (the whole ResNet)",
                            {"freeze_vision_blocks": 5}),
    "no_replay": ("default start, `--replay-synthetic 0` (no pretraining scans replayed)", {"replay_synthetic": 0.0}),
    "replay_2": ("default start, `--replay-synthetic 2` (two pretraining scans replayed per scan)",
                 {"replay_synthetic": 2.0}),
    "mirror_scans": ("default start, `--mirror-scans 0.5` (half the training scans mirrored left to right)",
                     {"mirror_scans": 0.5}),
    "pretraining_100_people": ("`--pretraining-subjects 100` (a start pretrained on the main job's 100 synthetic "
                               "people, replayed)", {"pretraining_subjects": 100, "init_from": "auto"}),
    "person_runs_4": ("default start, `--scans-per-person 4` (each batch in runs of 4 scans of one person)",
                      {"scans_per_person": 4}),
    "validation_6": ("default start, `--validation-subjects 6` (the best epoch on 6 training people)",
                     {"validation_subjects": 6}),
}
DEPTH_CNN = "baseline: CNN on one 64x64 frontal depth map (its own recipe)"
REFERENCE_ARM = "default"
# Zero-shot class names (issue 14, item 4): set -> {class: word}; a class left out keeps its name. The label names;
# synonyms from the prompt table (seen in augmented training prompts); words outside the prompt vocabulary (never seen).
WORD_SETS = {
    "label_names": {},
    "prompt_table_synonyms": ZERO_SHOT_WORDS,
    "unseen_words": {"anger": "irate", "disgust": "repelled", "fear": "petrified", "happiness": "elated",
                     "sadness": "melancholy", "surprise": "dumbfounded"},
}  # fmt: skip
PRETRAINED_START = "the synthetic-pretrained start, not fine-tuned"


def target_config(layout: str, root, workdir, folds: int, epochs: int | None):
    """`facet-vlm train --dataset LAYOUT --data-dir ROOT --protocol standard` with every other setting its default."""
    from training.config import TrainConfig

    return TrainConfig(dataset=layout, data_dir=str(root), protocol="standard", num_folds=folds,
                       cache_dir=str(Path(workdir) / "cache"), **({"epochs": epochs} if epochs else {}))  # fmt: skip


def _summary(description: str, records: list, reference: list | None) -> dict:
    """Mean, std and train mean of an arm's runs, and its paired difference to the `reference` arm's runs (None for
    the reference itself)."""
    values = [record["value"] for record in records]
    train_values = [record["train_value"] for record in records]
    return {"description": description, "mean": float(np.mean(values)) if values else None,
            "std": float(np.std(values)) if values else None,
            "train_mean": float(np.mean(train_values)) if train_values else None, "runs": records,
            "paired_difference": paired_difference(records, reference) if reference is not None else None}  # fmt: skip


def zero_shot_accuracies(model_dir, test) -> dict:
    """Accuracy of the saved FACET-VLM at `model_dir` on the split `test`, prompted with each of `WORD_SETS` as the
    class names (as the zero-shot pipeline prompts: every template, averaged per class)."""
    from training.evaluate_model import evaluate_split, load_trained

    model, processor = load_trained(model_dir)
    return {name: evaluate_split(model, processor, test, [words.get(label, label) for label in test.label_names])
            ["accuracy"] for name, words in WORD_SETS.items()}  # fmt: skip


def _zero_shot_summary(description: str, records: list) -> dict:
    """Mean accuracy per word set over `records` (one dict of accuracies per run)."""
    return {"description": description, "runs": records,
            "accuracy": {name: float(np.mean([record[name] for record in records])) for name in WORD_SETS}}  # fmt: skip


def run_settings(quick: bool = False, subjects=None, folds=None, run_folds=None, seeds=None, first_seed=None) -> dict:
    """`QUICK` or `FULL` with the values given; every fold is run unless `run_folds` asks for fewer, with model seeds
    `first_seed` (default 1) onwards, so that a later run can add seeds to a measurement."""
    if first_seed is not None and first_seed < 1:
        raise ValueError(f"first_seed must be 1 or more; got {first_seed}.")
    settings = dict(QUICK if quick else FULL)
    settings.update({key: value for key, value in dict(subjects=subjects, folds=folds, run_folds=run_folds,
                                                        seeds=seeds).items() if value})  # fmt: skip
    settings["run_folds"] = min(settings.get("run_folds", settings["folds"]), settings["folds"])
    settings["first_seed"] = first_seed or 1
    return settings


def run(quick: bool = False, subjects=None, folds=None, run_folds=None, seeds=None, first_seed=None, arms=None,
        work_dir=None, output=None, target_seed: int = TARGET_SEED, layout: str = "bu3dfe") -> dict:  # fmt: skip
    """The default arm, the `arms` named (default: every arm) and, on static scans, the depth CNN on the first
    `run_folds` folds with `seeds` model seeds each (from `first_seed`); rewrites `output` after every (fold, seed)
    and returns the results. Another `target_seed` writes other people of the same target generator: a tree to choose
    settings on, so that the reported tree never chose them. `layout` (`LAYOUTS`) is the tree's and the command's
    dataset."""
    from benchmarks.baselines import DEPTH_CNN_RECIPE, train_depth_cnn
    from datasets_scripts.synthetic_faces import (
        SyntheticConfig, is_complete_tree, write_bu3dfe_tree, write_bu4dfe_tree,
    )
    from modeling_facet import FacetMeshImageProcessor, FacetVLMConfig
    from training.data import load_splits
    from training.pretraining import synthetic_pretrained
    from training.train import train

    settings = run_settings(quick, subjects, folds, run_folds, seeds, first_seed)
    if layout not in LAYOUTS:
        raise ValueError(f"Unknown layout {layout!r}; choose one of {list(LAYOUTS)}.")
    unknown = set(arms or ()) - set(ARMS)
    if unknown:
        raise ValueError(f"Unknown arms {sorted(unknown)}; choose from {list(ARMS)}.")
    arms = [REFERENCE_ARM, *(arm for arm in (arms or ARMS) if arm != REFERENCE_ARM)]
    workdir = Path(work_dir or tempfile.mkdtemp(prefix="facet-pretraining-gain-"))
    started = time.perf_counter()
    generator = SyntheticConfig(seed=target_seed).transfer_target()
    root = workdir / layout
    if not is_complete_tree(root):
        write_tree = write_bu4dfe_tree if layout == "bu4dfe" else write_bu3dfe_tree
        write_tree(root, settings["subjects"], generator, num_workers=min(2, os.cpu_count() or 1), progress=False)
    cfg = target_config(layout, root, workdir, settings["folds"], settings["epochs"])
    pretraining_started = time.perf_counter()
    pretrained = synthetic_pretrained(cfg, pretrain=train)
    results = {
        "benchmark": "pretraining_gain", "quick": quick, "complete": False,
        "settings": {**settings, "layout": layout, "target_generator": dataclasses.asdict(generator),
                     "protocol": cfg.protocol, "preset": cfg.preset, "epochs": cfg.epochs,
                     "learning_rate": cfg.learning_rate, "depth_cnn_recipe": dataclasses.asdict(DEPTH_CNN_RECIPE),
                     "command": f"facet-vlm train --dataset {layout} --data-dir ROOT --protocol standard --fold F "
                                "--num-folds K --seed S [--init-from none]",
                     "arms": {arm: ARMS[arm][1] for arm in arms},
                     "zero_shot_words": WORD_SETS,
                     "paired_difference": f"arm minus {REFERENCE_ARM} on the same (fold, seed), 95 % t interval"},
        "pretrained": str(pretrained),
        "pretraining_seconds": round(time.perf_counter() - pretraining_started, 1),
        "load_average_before": load_average(),
    }  # fmt: skip
    processor = FacetMeshImageProcessor.from_model_config(FacetVLMConfig.from_preset(cfg.preset))
    records = {name: [] for name in arms}
    zero_shot = {name: [] for name in ("pretrained", *arms)}
    descriptions = {"pretrained": PRETRAINED_START, **{arm: ARMS[arm][0] for arm in arms}, "depth_cnn": DEPTH_CNN}
    for fold in range(settings["run_folds"]):
        splits = load_splits(dataclasses.replace(cfg, fold=fold), processor, show_progress=False)
        zero_shot["pretrained"].append({"fold": fold, **zero_shot_accuracies(pretrained, splits["test"])})
        for seed in range(settings["first_seed"], settings["first_seed"] + settings["seeds"]):
            for arm in arms:
                output_dir = workdir / "runs" / f"fold-{fold}" / f"seed-{seed}" / arm
                fields = {"init_from": str(pretrained), **ARMS[arm][1]} if arm != REFERENCE_ARM else {}
                metrics = train(dataclasses.replace(cfg, fold=fold, seed=seed, output=str(output_dir),
                                                    overwrite_output=True, **fields))  # fmt: skip
                records[arm].append({"fold": fold, "seed": seed, "value": metrics["accuracy"],
                                     "train_value": metrics["train_metrics"]["accuracy"],
                                     "seconds": round(metrics["train_seconds"], 1)})  # fmt: skip
                zero_shot[arm].append({"fold": fold, "seed": seed,
                                       **zero_shot_accuracies(output_dir / "model", splits["test"])})  # fmt: skip
                shutil.rmtree(output_dir / "model", ignore_errors=True)
            if splits["train"].frame_mask is None:
                depth = train_depth_cnn(splits["train"], splits["test"], processor.views, processor.channels,
                                        seed=seed)  # fmt: skip
                records.setdefault("depth_cnn", []).append({"fold": fold, "seed": seed, "value": depth["accuracy"],
                                                            "train_value": depth["train_accuracy"]})  # fmt: skip
            results["arms"] = {name: _summary(descriptions[name], runs,
                                              None if name == REFERENCE_ARM else records[REFERENCE_ARM])
                               for name, runs in records.items()}  # fmt: skip
            results["zero_shot"] = {name: _zero_shot_summary(descriptions[name], runs)
                                    for name, runs in zero_shot.items()}  # fmt: skip
            results["wall_seconds"] = round(time.perf_counter() - started, 1)
            if output:
                write_json(results, output, echo=False)
    results.update(complete=True, load_average_after=load_average())
    if work_dir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def add_arguments(parser):
    parser.add_argument("--subjects", type=int, help=f"target subjects (default {FULL['subjects']}, quick 6)")
    parser.add_argument("--folds", type=int, help=f"subject-independent folds (default {FULL['folds']})")
    parser.add_argument("--run-folds", type=int, help="run the first R folds (default: all)")
    parser.add_argument("--seeds", type=int, help=f"model seeds per fold (default {FULL['seeds']})")
    parser.add_argument("--first-seed", type=int, help="the first model seed (default 1; a later one adds seeds to an "
                        "earlier run's on the same tree and starts)")
    parser.add_argument("--arms", type=lambda text: text.split(","), help=f"comma-separated arms (default: all of "
                        f"{', '.join(ARMS)}); the default arm always runs")
    parser.add_argument("--target-seed", type=int, default=TARGET_SEED, help=f"the target tree's people (default "
                        f"{TARGET_SEED}, the reported tree; another seed gives a tree to choose settings on)")
    parser.add_argument("--layout", default="bu3dfe", choices=LAYOUTS, help="the target tree's layout and "
                        "the command's --dataset (default bu3dfe; bu4dfe: 4D sequences, no depth CNN)")
    parser.add_argument("--work-dir", help="keep the data and runs in this folder (default: a temporary one)")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="JSON file to write (rewritten after every fold)")
    parser.add_argument("--quick", action="store_true", help="CI-sized: 6 subjects, 1 fold, 1 seed, 1 epoch")
    add_arguments(parser)
    arguments = parser.parse_args(argv)
    results = run(**vars(arguments))
    write_json(results, arguments.output)
    return results


if __name__ == "__main__":
    main()
