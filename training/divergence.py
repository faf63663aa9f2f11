"""Stops a training run that has diverged: a non-finite loss, or non-finite weights about to be saved. Without it a
run from NaN weights trains NaN losses, saves a NaN model, writes chance-level metrics and exits 0."""

from __future__ import annotations

import math

import torch


class NonFiniteError(FloatingPointError):
    """The run produced NaN or infinite numbers; the message says where (step, loss terms or weight names)."""


def non_finite_names(named_tensors) -> list:
    """Names of the floating-point tensors of `named_tensors` ((name, tensor) pairs) holding a NaN or infinity."""
    return [name for name, tensor in named_tensors
            if tensor.is_floating_point() and not torch.isfinite(tensor).all()]  # fmt: skip


def listed_names(names: list, noun: str = "tensor", limit: int = 3) -> str:
    """'2 tensors: a, b' (the first `limit` names)."""
    shown = ", ".join(names[:limit]) + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")
    return f"{len(names)} {noun}{'s' if len(names) > 1 else ''}: {shown}"


def check_loss(terms: dict, first_step: int, last_step: int) -> None:
    """Raises NonFiniteError when the mean loss over steps `first_step`..`last_step` (read back from the device
    once per epoch or checkpoint) is NaN or infinite, naming every non-finite term."""
    if math.isfinite(terms["loss"]):
        return
    steps = f"step {last_step}" if first_step == last_step else f"steps {first_step}-{last_step}"
    bad = ", ".join(f"{name} {value}" for name, value in terms.items() if name != "loss" and not math.isfinite(value))
    raise NonFiniteError(f"the training loss is {terms['loss']} at {steps}" + (f" ({bad})" if bad else "")
                         + "; the run stops: lower the learning rate, or check the data and the checkpoint it started from")  # fmt: skip


def check_weights(model, step: int) -> None:
    """Raises NonFiniteError when a parameter or buffer of `model` holds NaN or infinity (before saving it)."""
    bad = non_finite_names(model.state_dict().items())
    if bad:
        raise NonFiniteError(f"non-finite weights at step {step} ({listed_names(bad)}); nothing is saved")
