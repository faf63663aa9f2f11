"""The output folder of a training run. A run writes into an empty folder, into the folder of a run with the same
settings, or, with `--overwrite-output`, into any folder (after removing the files an earlier run left there);
`--resume` continues only a run with the same settings. Before this, a new run in a folder holding an older run's
checkpoints with higher steps had all its own checkpoints pruned, and `--resume` then continued the old run.

The settings of a run are recorded in its `train_config.json` (written when it starts) and in every checkpoint's
`trainer_state.json` (training/checkpointing.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

from . import checkpointing


RUN_CONFIG = "train_config.json"
# Settings that do not change what a run computes: a run may be resumed, or run again, with other values.
NOT_COMPARED = ("output", "resume", "overwrite_output", "save_steps", "save_total_limit", "num_proc", "cache_dir",
                "data_dir", "eval_data_dir", "eval_every_epoch")  # fmt: skip
# What a run writes into its folder besides its record and checkpoints; removed when a new run starts there.
RUN_OUTPUTS = ("epochs.jsonl", "metrics.json", "confusion_matrix.png", "model", "tensorboard",
               checkpointing.BEST_WEIGHTS_NAME)  # fmt: skip
PARTIAL_CHECKPOINT_PREFIX = ".checkpoint-"


class OutputFolderError(ValueError):
    """The output folder holds something a run must not overwrite or resume; the message says what and which flag
    to give."""

    def __init__(self, folder, problem: str):
        self.folder = str(folder)
        self.problem = problem
        super().__init__(f"{self.folder}: {problem}")


def _json_values(cfg) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def _default(field: dataclasses.Field):
    return field.default_factory() if field.default is dataclasses.MISSING else field.default


def differing_settings(recorded: dict, cfg) -> list:
    """'name (value there, value now)' for each setting of `cfg` that changes the run and differs from `recorded`
    (a setting the record predates counts with its default)."""
    current = _json_values(cfg)
    differences = []
    for field in dataclasses.fields(cfg):
        if field.name in NOT_COMPARED:
            continue
        there = recorded.get(field.name, json.loads(json.dumps(_default(field))))
        if there != current[field.name]:
            differences.append(f"{field.name} ({there!r} there, {current[field.name]!r} now)")
    return differences


def recorded_settings(folder: Path) -> list:
    """`(file, settings)` of every record of a run in `folder`: its train_config.json and each complete
    checkpoint's trainer_state.json (an unreadable checkpoint is left to the resume, which skips or names it)."""
    records = []
    config = folder / RUN_CONFIG
    if config.is_file():
        try:
            records.append((config, json.loads(config.read_text())))
        except (OSError, ValueError) as error:
            raise OutputFolderError(folder, f"its {RUN_CONFIG} cannot be read ({error}); pass --overwrite-output to "
                                    "replace the run there")  # fmt: skip
    for checkpoint in checkpointing.complete_checkpoints(folder):
        state_file = checkpoint / checkpointing.LOOP_STATE_NAME
        try:
            settings = json.loads(state_file.read_text()).get("config")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(settings, dict):
            records.append((state_file, settings))
    return records


def _contents(folder: Path, cfg) -> list:
    """The entries of `folder`, without the dataset cache when `cfg.cache_dir` is one of them (the demo's)."""
    if not folder.is_dir():
        return []
    cache = Path(cfg.cache_dir).resolve() if cfg.cache_dir else None
    return [entry for entry in folder.iterdir() if entry.resolve() != cache]


def check_output_folder(cfg) -> None:
    """Refuses to start `cfg`'s run when its output folder holds another run, files of no run, or (without
    --resume) checkpoints of this run; with --resume, when any record there has other settings.

    Raises:
        OutputFolderError: saying what the folder holds and which flag to give.
    """
    folder = Path(cfg.output)
    if cfg.resume and cfg.overwrite_output:
        raise OutputFolderError(folder, "give --resume (continue the run there) or --overwrite-output (replace it), "
                                "not both")  # fmt: skip
    if cfg.overwrite_output or not _contents(folder, cfg):
        return
    records = recorded_settings(folder)
    if not records:
        verb = "--resume: it" if cfg.resume else "is not empty and"
        raise OutputFolderError(folder, f"{verb} holds no FACET-VLM training run (no {RUN_CONFIG} or checkpoint); "
                                "choose another --output, or pass --overwrite-output to write into it")  # fmt: skip
    for path, settings in records:
        differences = differing_settings(settings, cfg)
        if differences and cfg.resume:
            raise OutputFolderError(folder, f"--resume: the run there has other settings: {', '.join(differences)} "
                                    f"(in {path.relative_to(folder)}); resume with its settings, or start a new run with "
                                    "--overwrite-output or another --output")  # fmt: skip
        if differences:
            raise OutputFolderError(folder, f"holds a different training run: {', '.join(differences)} (in "
                                    f"{path.relative_to(folder)}); pass --overwrite-output to replace it, or choose another --output")  # fmt: skip
    checkpoints = checkpointing.complete_checkpoints(folder)
    if checkpoints and not cfg.resume:
        raise OutputFolderError(folder, f"holds checkpoints of this run (up to step {checkpoints[0].name.split('-')[1]}): "
                                "pass --resume to continue it, or --overwrite-output to start it over")  # fmt: skip


def start_run(cfg) -> None:
    """Records `cfg` in its output folder; a run that does not resume first removes what an earlier run left there
    (its checkpoints, epoch log, metrics and model), so nothing of it is pruned into, resumed or appended to."""
    folder = Path(cfg.output)
    folder.mkdir(parents=True, exist_ok=True)
    if not cfg.resume:
        for entry in folder.iterdir():
            ours = entry.name in RUN_OUTPUTS or checkpointing.CHECKPOINT_PATTERN.match(entry.name)
            if ours or entry.name.startswith(PARTIAL_CHECKPOINT_PREFIX):
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    partial = folder / f".{RUN_CONFIG}.partial"
    partial.write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    os.replace(partial, folder / RUN_CONFIG)


def prepare_output_folder(cfg, accelerator=None) -> None:
    """`check_output_folder` on every process, then `start_run` on the main one (all processes wait for it)."""
    check_output_folder(cfg)
    if accelerator is None:
        start_run(cfg)
        return
    accelerator.wait_for_everyone()  # every process has checked the folder before it changes
    if accelerator.is_main_process:
        start_run(cfg)
    accelerator.wait_for_everyone()


def restore_epoch_log(folder, history: list) -> None:
    """Rewrites the epoch log of a resumed run from its checkpoint's history: records logged after the checkpoint
    would otherwise appear twice."""
    Path(folder, "epochs.jsonl").write_text("".join(json.dumps(record) + "\n" for record in history))
