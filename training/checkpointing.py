"""Atomic, safetensors-only training checkpoints: model, optimizer, scheduler and the loop position.

A checkpoint folder is written under a temporary name and renamed when complete, so a run killed mid-write never
leaves a half checkpoint that `--resume` would pick up. Optimizer tensors go to safetensors, everything else to
JSON: nothing is ever unpickled. Loading verifies every file (readable, the expected keys and shapes, finite weights)
before anything is applied, names the file in every error, and `resume` falls back to the previous complete
checkpoint when the newest one is broken.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .divergence import listed_names, non_finite_names


CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
WEIGHTS_NAME = "model.safetensors"
LOOP_STATE_NAME = "trainer_state.json"
BEST_WEIGHTS_NAME = "best_validation.safetensors"  # the best validation epoch's weights (--validation-subjects)


class CheckpointError(ValueError):
    """A checkpoint file is unreadable or does not fit the run; `path` is the file, `problem` what is wrong."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def _split_state(state, prefix: str, tensors: dict):
    """Replace tensors in a nested state dict by references into `tensors` (JSON-able result)."""
    if isinstance(state, torch.Tensor):
        key = f"{prefix}"
        tensors[key] = state.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(state, dict):
        return {"__dict__": [[_split_state(k, f"{prefix}.k{i}", tensors), _split_state(v, f"{prefix}.{i}", tensors)]
                             for i, (k, v) in enumerate(state.items())]}  # fmt: skip
    if isinstance(state, (list, tuple)):
        return {"__list__": [_split_state(v, f"{prefix}.{i}", tensors) for i, v in enumerate(state)],
                "tuple": isinstance(state, tuple)}  # fmt: skip
    return state


def _join_state(state, tensors: dict):
    if isinstance(state, dict) and "__tensor__" in state:
        return tensors[state["__tensor__"]]
    if isinstance(state, dict) and "__dict__" in state:
        return {_join_state(k, tensors): _join_state(v, tensors) for k, v in state["__dict__"]}
    if isinstance(state, dict) and "__list__" in state:
        items = [_join_state(v, tensors) for v in state["__list__"]]
        return tuple(items) if state["tuple"] else items
    return state


def save_state_dict(state: dict, folder: Path, name: str):
    """Write a nested state dict (e.g. an optimizer's) as `name.safetensors` + `name.json`."""
    tensors: dict = {}
    structure = _split_state(state, name, tensors)
    save_file(tensors, str(folder / f"{name}.safetensors"))
    (folder / f"{name}.json").write_text(json.dumps(structure))


def load_state_dict(folder: Path, name: str) -> dict:
    tensors = load_file(str(folder / f"{name}.safetensors"))
    return _join_state(json.loads((folder / f"{name}.json").read_text()), tensors)


def save_checkpoint(output_dir, step: int, model, processor, optimizer, scheduler, loop_state: dict) -> Path:
    """Save everything needed to resume at `step` into `output_dir/checkpoint-<step>` atomically."""
    output_dir = Path(output_dir)
    final = output_dir / f"checkpoint-{step}"
    partial = output_dir / f".checkpoint-{step}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    model.save_pretrained(partial)
    processor.save_pretrained(partial)
    save_state_dict(optimizer.state_dict(), partial, "optimizer")
    (partial / "scheduler.json").write_text(json.dumps(scheduler.state_dict()))
    (partial / "trainer_state.json").write_text(json.dumps(loop_state, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(partial, final)
    return final


def complete_checkpoints(output_dir) -> list:
    """The complete checkpoint folders of `output_dir` (those with their loop state written), newest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    steps = [(int(m.group(1)), p) for p in output_dir.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name))]
    return [p for step, p in sorted(steps, reverse=True) if (p / LOOP_STATE_NAME).is_file()]


def latest_checkpoint(output_dir) -> Path | None:
    """The complete checkpoint with the highest step in `output_dir`, or None."""
    return next(iter(complete_checkpoints(output_dir)), None)


def _read(path: Path, read):
    """`read(path)`, with any failure (missing, truncated, not JSON or safetensors) as a CheckpointError."""
    try:
        return read(path)
    except Exception as error:  # safetensors, JSON and OS errors alike: the file is unusable
        raise CheckpointError(path, f"cannot be read ({type(error).__name__}: {error})") from error


def _require(values, keys, path: Path) -> None:
    missing = [key for key in keys if not isinstance(values, dict) or key not in values]
    if missing:
        raise CheckpointError(path, f"missing {', '.join(repr(key) for key in missing)}")


def _verified_weights(path: Path, model) -> dict:
    """The tensors of `path` after checking them against `model`'s state dict: names, shapes, finite values."""
    return _verified_tensors(path, model.state_dict())


def _verified_tensors(path: Path, expected: dict) -> dict:
    tensors = _read(path, lambda p: load_file(str(p)))
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        problems = ([f"missing {listed_names(missing, 'weight')}"] if missing else []) + (
            [f"unexpected {listed_names(unexpected, 'weight')}"] if unexpected else [])  # fmt: skip
        raise CheckpointError(path, "; ".join(problems) + " (a checkpoint of another model?)")
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(path, f"{name} has shape {tuple(tensor.shape)}, the model's is {tuple(expected[name].shape)}")
    bad = non_finite_names(tensors.items())
    if bad:
        raise CheckpointError(path, f"non-finite values in {listed_names(bad)}")
    return tensors


def trained_state(model) -> dict:
    """What training changes in `model` (its trainable parameters and its buffers), copied to the CPU: a frozen
    text tower is left out."""
    frozen = {name for name, parameter in model.named_parameters() if not parameter.requires_grad}
    return {name: tensor.detach().to("cpu", copy=True) for name, tensor in model.state_dict().items()
            if name not in frozen}  # fmt: skip


def save_best_weights(output_dir, state: dict) -> Path:
    """Write the best validation epoch's [`trained_state`] to `output_dir/best_validation.safetensors` atomically."""
    path = Path(output_dir) / BEST_WEIGHTS_NAME
    partial = path.with_name(f".{path.name}.partial")
    save_file(state, str(partial))
    os.replace(partial, path)
    return path


def load_best_weights(output_dir, model) -> dict:
    """The best validation epoch's weights that a resumed run saved before it was stopped, checked against `model`.

    Raises:
        CheckpointError: the file is missing, unreadable or not `model`'s.
    """
    path = Path(output_dir) / BEST_WEIGHTS_NAME
    if not path.is_file():
        raise CheckpointError(path, "missing: the run there scored validation epochs but its best epoch's weights "
                              "are gone; start it again with --overwrite-output")  # fmt: skip
    return _verified_tensors(path, trained_state(model))


def load_checkpoint(folder, model, optimizer, scheduler) -> dict:
    """Loads checkpoint `folder` into `model`, `optimizer` and `scheduler` (unwrapped) and returns its loop state
    (`step`, `history`, `running`, `config`). Every file is read and checked before anything is applied.

    Raises:
        CheckpointError: naming the file that is unreadable, lacks a key, or holds weights of other names or
            shapes, or non-finite ones.
    """
    folder = Path(folder)
    state = _read(folder / LOOP_STATE_NAME, lambda p: json.loads(p.read_text()))
    _require(state, ("step", "history"), folder / LOOP_STATE_NAME)
    weights = _verified_weights(folder / WEIGHTS_NAME, model)
    optimizer_tensors = _read(folder / "optimizer.safetensors", lambda p: load_file(str(p)))
    if bad := non_finite_names(optimizer_tensors.items()):
        raise CheckpointError(folder / "optimizer.safetensors", f"non-finite values in {listed_names(bad)}")
    structure = _read(folder / "optimizer.json", lambda p: json.loads(p.read_text()))
    optimizer_state = _read(folder / "optimizer.json", lambda p: _join_state(structure, optimizer_tensors))
    _require(optimizer_state, ("state", "param_groups"), folder / "optimizer.json")
    scheduler_state = _read(folder / "scheduler.json", lambda p: json.loads(p.read_text()))
    _require(scheduler_state, scheduler.state_dict(), folder / "scheduler.json")
    model.load_state_dict(weights)
    try:
        optimizer.load_state_dict(optimizer_state)
    except (ValueError, KeyError, TypeError) as error:  # parameter groups of another model or optimizer
        raise CheckpointError(folder / "optimizer.json", f"does not fit the optimizer ({error})") from error
    scheduler.load_state_dict(scheduler_state)
    return state


def resume(output_dir, model, optimizer, scheduler, log=print):
    """Loads the newest complete checkpoint of `output_dir` that verifies, falling back to older ones (each skipped
    one is logged with its error). Returns `(folder, loop state)`, or None when there is no checkpoint.

    Raises:
        CheckpointError: the newest checkpoint's error, when no checkpoint loads.
    """
    failures = []
    for folder in complete_checkpoints(output_dir):
        try:
            return folder, load_checkpoint(folder, model, optimizer, scheduler)
        except CheckpointError as error:
            log(f"Checkpoint {folder} is unusable ({error}); trying the previous one.")
            failures.append(error)
    if failures:
        newest = failures[0]
        raise CheckpointError(newest.path, f"{newest.problem}; no older checkpoint in {output_dir} loads either")
    return None


def prune_checkpoints(output_dir, keep: int):
    """Delete all but the `keep` most recent complete checkpoints."""
    output_dir = Path(output_dir)
    steps = sorted((int(m.group(1)), p) for p in output_dir.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name)))
    for _, path in steps[:-keep] if keep > 0 else []:
        shutil.rmtree(path, ignore_errors=True)
