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
