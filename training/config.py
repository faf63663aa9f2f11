"""Training settings: `TrainConfig` (YAML and/or flags) and the `facet-vlm train` flags, without importing torch,
so that the command line starts fast."""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml


DEMO_CONFIG = Path(__file__).resolve().parent / "configs" / "demo.yaml"  # the main job's recipe

@dataclass
class TrainConfig:
    """Everything a training run depends on; read from a YAML file (`--config`) and/or command-line flags."""

    dataset: str = "synthetic"
    data_dir: str | None = None
    protocol: str = "standard"
    fold: int = 0
    num_folds: int = 10
    cv: bool = False
    eval_dataset: str | None = None
    eval_data_dir: str | None = None
    eval_protocol: str = "all"
    synthetic_subjects: int = 100
    window_length: int | None = None  # 4D datasets: sliding windows of this many frames, one example each
    window_stride: int = 1  # frames between the starts of consecutive windows
    train_intensities: list | None = None
    test_intensities: list | None = None
    preset: str = "small"
    pretrained: str | None = None
    vision_pretrained: str | None = None
    text_pretrained: str | None = None
    init_from: str = "auto"  # a model folder or repo id, "synthetic", "none" or "auto" (training/pretraining.py)
    model_overrides: dict = field(default_factory=dict)
    # The vision tower's first blocks (stem, then stages) that keep their start weights; None: all of them when the run
    # starts from the synthetic-pretrained model on sequences, else none (training/pretraining.py)
    freeze_vision_blocks: int | None = None
    # Synthetic pretraining scans drawn into each epoch, per training scan; None: 1 when the run starts from the
    # synthetic-pretrained model on single-label static scans, else 0 (training/pretraining.py)
    replay_synthetic: float | None = None
    # Synthetic people that start is pretrained on; None: PRETRAINING_SUBJECTS (training/pretraining.py)
    pretraining_subjects: int | None = None
    # An epoch is a shuffle of runs of this many scans of one person (replayed people too), so that a batch sets a few
    # expressions of each of its people against each other; 1: every scan shuffled on its own. Off: no measured effect
    # on the transfer benchmark (benchmarks/results/pretraining_person_runs.json)
    scans_per_person: int = 1
    epochs: int = 20
    max_steps: int | None = None
    batch_size: int = 32
    learning_rate: float = 2e-3
    scalar_learning_rate: float = 2e-2  # the logit scale, the L_gf margin and the pooling temperatures
    weight_decay: float = 0.05
    warmup_ratio: float = 0.05
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0
    recalibrate_batch_norm: bool = True  # re-estimate BatchNorm statistics on the clean training split at the end
    mixed_precision: str = "auto"
    seed: int = 42  # the model's initialisation, the data order, augmentation and dropout
    data_seed: int = 42  # the protocol folds and the synthetic people: fixed while `seed` varies
    # Training people held out (chosen with data_seed) to score every epoch: the best epoch's weights are kept.
    validation_subjects: int = 0
    # Mixed view augmentation: no measured gain when fine-tuning (benchmarks/results/pretraining_ablation.json).
    augment_views: bool = False
    occlude_views: float = 0.0  # probability that a training sample loses one view (blanked), for CVSA to weigh
    mirror_scans: float = 0.0  # probability that a training sample is its face mirrored left to right
    augment_prompts: bool = True
    exclude_words: list = field(default_factory=list)
    eval_every_epoch: bool = False
    output: str = "outputs/run"
    cache_dir: str | None = None
    num_proc: int = 1
    save_steps: int = 0
    save_total_limit: int = 2
    resume: bool = False
    overwrite_output: bool = False  # write into an output folder that holds another run (removing its checkpoints)

    @classmethod
    def from_yaml(cls, path, **overrides) -> "TrainConfig":
        values = yaml.safe_load(Path(path).read_text()) or {}
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"{path}: unknown training settings {sorted(unknown)}.")
        return cls(**{**values, **overrides})

    def __post_init__(self):
        from datasets_scripts.registry import DATASETS

        if self.dataset not in DATASETS:
            raise ValueError(f"Unknown dataset {self.dataset!r}; choose one of {sorted(DATASETS)}.")
        if self.eval_dataset is not None and self.eval_dataset not in DATASETS:
            raise ValueError(f"Unknown eval dataset {self.eval_dataset!r}; choose one of {sorted(DATASETS)}.")
        if self.freeze_vision_blocks is not None and self.freeze_vision_blocks < 0:
            raise ValueError(f"freeze_vision_blocks must be 0 or more; got {self.freeze_vision_blocks}.")
        if self.replay_synthetic is not None and self.replay_synthetic < 0:
            raise ValueError(f"replay_synthetic must be 0 or more; got {self.replay_synthetic}.")
        if self.pretraining_subjects is not None and self.pretraining_subjects < 1:
            raise ValueError(f"pretraining_subjects must be 1 or more; got {self.pretraining_subjects}.")
        if self.scans_per_person < 1:
            raise ValueError(f"scans_per_person must be 1 or more; got {self.scans_per_person}.")
        if not 0 <= self.mirror_scans <= 1:
            raise ValueError(f"mirror_scans must be a probability in [0, 1]; got {self.mirror_scans}.")
        if self.validation_subjects < 0:
            raise ValueError(f"validation_subjects must be 0 or more; got {self.validation_subjects}.")


def add_arguments(parser):
    """Flags for every TrainConfig field (`--epochs 5`, `--model-overrides '{"cvsa": "mean"}'`), plus --config."""
    parser.add_argument("--config", help="YAML file of training settings; flags override it.")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type.startswith("bool"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        elif f.type.startswith(("list", "dict")):
            parser.add_argument(flag, type=json.loads, default=None, help="JSON, e.g. [3, 4]")
        else:
            kind = {"int": int, "float": float}.get(f.type.split(" ")[0], str)
            parser.add_argument(flag, type=kind, default=None)


def config_from_args(args) -> TrainConfig:
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                 if getattr(args, f.name, None) is not None}  # fmt: skip
    return TrainConfig.from_yaml(args.config, **overrides) if args.config else TrainConfig(**overrides)
