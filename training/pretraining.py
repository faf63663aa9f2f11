"""Where a training run starts: by default (`init_from: auto`), a run on a benchmark starts from FACET-VLM pretrained
on the synthetic generator, built once per architecture into the HF cache and reused by every later run.

No pretrained image weights install offline, so the image tower learns from the data, and a benchmark has only
hundreds of scans. On BU-3DFE-layout scans of a real face model (issue 14), the same command reached 69.4 % from
scratch and 80.6 % starting from the main job's model. That model's recipe (training/configs/demo.yaml) is the
pretraining recipe, on `PRETRAINING_SUBJECTS` synthetic people instead of its 100; `pretraining_subjects` gives it
another number, in a start of its own.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

from filelock import FileLock
from huggingface_hub import constants

from datasets_scripts.registry import DATASETS
from datasets_scripts.synthetic_faces import GENERATOR_VERSION
from modeling_facet import FacetVLMConfig

from .config import DEMO_CONFIG, TrainConfig
from .data import ExpressionSplit, load_splits


PRETRAINING_CONFIG = DEMO_CONFIG
# Synthetic people the default start learns from: 3 times the main job's, for 3 times its build time (about 11 minutes
# on a 2-core CPU); on the transfer benchmark's reported tree it gained 4.0 points [+1.2, +6.8] over 100 people
# (benchmarks/results/pretraining_300_people*.json, 20 paired runs).
PRETRAINING_SUBJECTS = 300
# Settings added after starts were built, at the value that repeats the runs from before: a start's hash leaves them
# out at that value, so that the starts in users' caches stay valid.
SETTINGS_SINCE_STARTS = {"scans_per_person": 1}
# init_from values besides a model folder or Hub repo id.
AUTO, SYNTHETIC, SCRATCH = "auto", "synthetic", "none"


def cache_root() -> Path:
    """The package's folder in the HF cache ($HF_HOME, default ~/.cache/huggingface)."""
    return Path(constants.HF_HOME) / "facet-vlm"


def pretraining_config(cfg: TrainConfig) -> TrainConfig:
    """The pretraining run for `cfg`'s architecture (its preset and model overrides) on `cfg.pretraining_subjects`
    synthetic people (None: `PRETRAINING_SUBJECTS`), without its output folders."""
    return TrainConfig.from_yaml(PRETRAINING_CONFIG, preset=cfg.preset, model_overrides=cfg.model_overrides,
                                 init_from=SCRATCH, synthetic_subjects=cfg.pretraining_subjects or PRETRAINING_SUBJECTS)


def pretrained_folder(cfg: TrainConfig) -> Path:
    """The cache folder of the synthetic-pretrained model for `cfg`'s architecture: named by the preset and a hash
    of the whole pretraining run (less `SETTINGS_SINCE_STARTS` at their old value) and the generator's version, so
    that another recipe, architecture or generator never reuses it."""
    recipe = {key: value for key, value in dataclasses.asdict(pretraining_config(cfg)).items()
              if key not in SETTINGS_SINCE_STARTS or value != SETTINGS_SINCE_STARTS[key]}  # fmt: skip
    settings = json.dumps({**recipe, "generator_version": GENERATOR_VERSION}, sort_keys=True)
    return cache_root() / "synthetic-pretrained" / f"{cfg.preset}-{hashlib.sha256(settings.encode()).hexdigest()[:12]}"


def starting_checkpoint(cfg: TrainConfig, pretrain) -> str | Path | None:
    """The checkpoint `cfg`'s run starts from, None for a fresh model: `init_from` when it names a model;
    for `auto` on a benchmark and for `synthetic`, the synthetic-pretrained model (built with `pretrain`, the
    training job, when the cache lacks it). `auto` starts a synthetic dataset fresh (the generator is the
    pretraining data already), and leaves runs from `pretrained` or pretrained towers as they are."""
    if cfg.init_from == SCRATCH or (cfg.init_from == AUTO and (
            cfg.pretrained or cfg.vision_pretrained or cfg.text_pretrained
            or DATASETS[cfg.dataset].benchmark_key == "synthetic")):  # fmt: skip
        return None
    if cfg.init_from not in (AUTO, SYNTHETIC):
        return cfg.init_from
    return synthetic_pretrained(cfg, pretrain)


def synthetic_pretrained(cfg: TrainConfig, pretrain) -> Path:
    """The cached synthetic-pretrained model folder for `cfg`'s architecture, built by `pretrain` on first use (one
    process at a time: a second waits for the first's model)."""
    folder = pretrained_folder(cfg)
    model = folder / "model"
    if (model / "config.json").is_file():
        return model
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise FileNotFoundError(
            f"{model}: no synthetic-pretrained model for this architecture yet, and a multi-process run does not "
            f"build it; run `facet-vlm pretrain --preset {cfg.preset}"
            + (f" --model-overrides '{json.dumps(cfg.model_overrides)}'" if cfg.model_overrides else "")
            + (f" --pretraining-subjects {cfg.pretraining_subjects}" if cfg.pretraining_subjects else "")
            + "` once first, or start from scratch with --init-from none."
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if (model / "config.json").is_file():
            return model
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        settings = pretraining_config(cfg)
        recipe = dataclasses.replace(settings, output=str(partial / "run"),
                                     cache_dir=str(partial / "cache"))  # fmt: skip
        print(f"Pretraining FACET-VLM ({cfg.preset} preset) on {recipe.synthetic_subjects} synthetic people, once for "
              f"this architecture, into {folder} (the main job's recipe: about 4 to 9 minutes per 100 people "
              f"on a 2-core CPU for the small preset; --init-from none skips it).", flush=True)  # fmt: skip
        metrics = pretrain(recipe)
        shutil.rmtree(partial / "cache")
        (partial / "run" / "model").rename(partial / "model")
        record = {"recipe": dataclasses.asdict(settings),
                  "metrics": {key: value for key, value in metrics.items() if key != "confusion_matrix"}}  # fmt: skip
        (partial / "pretraining.json").write_text(json.dumps(record, indent=2))
        shutil.rmtree(partial / "run")
        partial.rename(folder)
    return model


def _unreplayable_kind(train_split: ExpressionSplit) -> str | None:
    """What keeps `train_split` from replay (which relabels single-label static scans), None when nothing does."""
    if train_split.multi_label:
        return "multi-hot labels"
    return "sequences" if train_split.frame_mask is not None else None


def _is_synthetic_start(cfg: TrainConfig, start) -> bool:
    """Whether `start` is the synthetic-pretrained model of `cfg`'s architecture and pretraining people."""
    return start is not None and Path(start) == pretrained_folder(cfg) / "model"


def replay_per_scan(cfg: TrainConfig, start, train_split: ExpressionSplit) -> float:
    """Synthetic scans replayed per training scan every epoch: `cfg.replay_synthetic` when given; by default 1 when
    the run starts from the synthetic-pretrained model (`start`) on single-label static scans (what `replay_split`
    can relabel) that share a class with it, else 0: on the transfer benchmark's 10 folds it gained 4.6 points
    (benchmarks/results/pretraining_replay.json)."""
    if cfg.replay_synthetic is not None:
        return cfg.replay_synthetic
    if not _is_synthetic_start(cfg, start) or _unreplayable_kind(train_split):
        return 0.0
    learned = FacetVLMConfig.from_pretrained(start).id2label.values()  # the pretraining data's classes
    return 1.0 if set(learned) & set(train_split.label_names) else 0.0


def frozen_vision_blocks(cfg: TrainConfig, start, train_split: ExpressionSplit, tower_blocks: int) -> int:
    """Vision blocks (of the tower's `tower_blocks`) that keep their start weights: `cfg.freeze_vision_blocks` when
    given; by default all of them when the run starts from the synthetic-pretrained model (`start`) on sequences, else
    none. A 4D benchmark has a hundred-odd training sequences and the start never trained its temporal transformer:
    on the 4D transfer benchmark, fine-tuning the whole tower fit the training sequences (98.5 % train) and tested
    13.8 points below keeping it (benchmarks/results/pretraining_4d.json)."""
    if cfg.freeze_vision_blocks is not None:
        return cfg.freeze_vision_blocks
    return tower_blocks if _is_synthetic_start(cfg, start) and train_split.frame_mask is not None else 0


def replay_split(cfg: TrainConfig, image_processor, train_split: ExpressionSplit) -> ExpressionSplit:
    """The pretraining recipe's training scans (the people the synthetic-pretrained start learned from), rendered
    with `image_processor` into `cfg.cache_dir`, in the classes `train_split` shares with them and labelled as
    `train_split` labels them: the pool that `cfg.replay_synthetic` draws from every epoch."""
    kind = _unreplayable_kind(train_split)
    if kind is not None:
        raise ValueError(f"replay_synthetic needs single-label static scans; {cfg.dataset} gives {kind}.")
    recipe = dataclasses.replace(pretraining_config(cfg), cache_dir=cfg.cache_dir, num_proc=cfg.num_proc)
    replay = load_splits(recipe, image_processor, show_progress=False)["train"].relabelled(train_split.label_names)
    if not len(replay):
        raise ValueError(f"{cfg.dataset}: the synthetic pretraining data has none of the classes "
                         f"{train_split.label_names}, so replay_synthetic has nothing to replay.")  # fmt: skip
    return replay
