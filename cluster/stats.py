"""Cheap statistics from anywhere in a step, reduced across ranks once per tick (StyleGAN's
training_stats idea): steps hand in dicts of scalar tensors, no host sync until the tick."""
from __future__ import annotations

import torch


class StatsTicker:
    def __init__(self, accelerator):
        self.accelerator = accelerator
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, stats: dict[str, torch.Tensor]) -> None:
        for k, v in stats.items():
            v = v.detach().float()
            self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()
            self.counts[k] = self.counts.get(k, 0) + 1

    def reduce(self) -> dict[str, float]:
        """Mean over the steps of this tick that reported each key (a term that starts mid-tick,
        like stage 2's self-training, is averaged over its own steps) and over all ranks (every
        rank must call it; steps report the same keys on every rank)."""
        if not self.sums:
            return {}
        keys = sorted(self.sums)
        local = torch.stack([self.sums[k] / self.counts[k] for k in keys])
        mean = self.accelerator.reduce(local, reduction="mean")
        self.sums, self.counts = {}, {}
        return dict(zip(keys, mean.tolist()))
