"""Cheap statistics from anywhere in a step, reduced across ranks once per tick (StyleGAN's
training_stats idea): steps hand in dicts of scalar tensors, no host sync until the tick."""
from __future__ import annotations

import torch


class StatsTicker:
    def __init__(self, accelerator):
        self.accelerator = accelerator
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, stats: dict[str, torch.Tensor]) -> None:
        for k, v in stats.items():
            v = v.detach().float()
            self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()
        self.count += 1

    def reduce(self) -> dict[str, float]:
        """Mean over the steps of this tick and over all ranks (every rank must call it)."""
        if not self.sums:
            return {}
        keys = sorted(self.sums)
        local = torch.stack([self.sums[k] for k in keys]) / max(self.count, 1)
        mean = self.accelerator.reduce(local, reduction="mean")
        self.sums, self.count = {}, 0
        return dict(zip(keys, mean.tolist()))
