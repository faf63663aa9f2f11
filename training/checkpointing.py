"""Atomic, safetensors-only training checkpoints: model, optimizer, scheduler and the loop position.

A checkpoint folder is written under a temporary name and renamed when complete, so a run killed mid-write never
leaves a half checkpoint that `--resume` would pick up. Optimizer tensors go to safetensors, everything else to
JSON: nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")


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


def latest_checkpoint(output_dir) -> Path | None:
    """The complete checkpoint with the highest step in `output_dir`, or None."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    steps = [(int(m.group(1)), p) for p in output_dir.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name))]
    complete = [(step, p) for step, p in steps if (p / "trainer_state.json").is_file()]
    return max(complete)[1] if complete else None


def prune_checkpoints(output_dir, keep: int):
    """Delete all but the `keep` most recent complete checkpoints."""
    output_dir = Path(output_dir)
    steps = sorted((int(m.group(1)), p) for p in output_dir.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name)))
    for _, path in steps[:-keep] if keep > 0 else []:
        shutil.rmtree(path, ignore_errors=True)
