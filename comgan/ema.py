"""Exponential moving average of the generator, the network that is evaluated and handed on.

Not torch.optim.swa_utils.AveragedModel: its decay ramp would count its own updates, not the
(resumed) training step; its state_dict adds a `module.` prefix and `n_averaged`, which would
change the checkpoint and generator.pt format; and it leaves parameters requiring grad."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn


def make_ema(model: nn.Module) -> nn.Module:
    ema = copy.deepcopy(model).eval()
    ema.requires_grad_(False)
    return ema


def ema_decay_at(step: int, decay: float) -> float:
    """Ramp the decay up from 0 so the early, fast-moving weights are not averaged for long."""
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.lerp_(p.detach(), 1 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)
