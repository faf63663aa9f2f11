"""Per-step loss terms of the training loop, summed on the device: a step adds its terms without reading them back
(on a GPU every `.item()` waits for the queued work, so the GPU would idle once per step); an epoch's end reads the
means back once, averaged over the processes."""

from __future__ import annotations

import torch


LOSS_TERMS = ("loss", "loss_ce", "loss_itc", "loss_cons", "loss_gf")


class LossMeans:
    """Running sums of the [`LOSS_TERMS`] of a model output, in float64 on the output's device."""

    def __init__(self):
        self.sums, self.steps = None, 0

    def add(self, outputs) -> None:
        terms = torch.stack([getattr(outputs, name).detach().double() for name in LOSS_TERMS])
        self.sums = terms if self.sums is None else self.sums + terms
        self.steps += 1

    def means(self, accelerator) -> dict:
        """The mean of every term over the steps added and over the processes (one read back to the host)."""
        values = accelerator.reduce(self.sums, reduction="mean").tolist()
        return {name: value / self.steps for name, value in zip(LOSS_TERMS, values)}

    def state(self, accelerator):
        """The sums so far (averaged over the processes) as JSON for a checkpoint, or None before the first step: a
        run resumed mid-epoch then logs the same epoch means as an uninterrupted one."""
        if not self.steps:
            return None
        return {"sums": accelerator.reduce(self.sums, reduction="mean").tolist(), "steps": self.steps}

    @classmethod
    def from_state(cls, state, device) -> "LossMeans":
        """The running sums of a checkpoint's [`state`] (None: empty) on `device`."""
        means = cls()
        if state:
            means.sums, means.steps = torch.tensor(state["sums"], dtype=torch.float64, device=device), state["steps"]
        return means
