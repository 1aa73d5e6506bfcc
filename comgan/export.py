"""What happens to G_ema between the end of stage 1 and the handoff artifact.

1. Its BatchNorm statistics are re-estimated for the averaged weights.
2. Its mask is oriented to cover the object: F and B are symmetric, so a run can learn the
   background's mask; the border prior decides and the roles are swapped exactly if needed.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .config import Config
from .metrics import border_mean
from .networks import Generator, sample_codes


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, make_inputs, batches: int) -> None:
    """Re-estimate BatchNorm running statistics for the averaged weights.

    The running statistics copied from the live generator belong to other weights than the EMA's;
    eval-mode samples then drift in colour and mask sharpness. A cumulative average over fresh
    batches (momentum=None) fixes that; `make_inputs()` returns the forward arguments of one batch.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or batches < 1:
        return
    saved = [(m.momentum) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for _ in range(batches):
        model(*make_inputs())
    for m, momentum in zip(bns, saved):
        m.momentum = momentum
    model.eval()


@torch.no_grad()
def orient_foreground(generator: nn.Module, make_inputs, batches: int = 4) -> bool:
    """Make the mask cover the object, not the background: if generated masks mostly cover the
    image border (where backgrounds are and objects rarely are), swap F and B. Returns True if
    it swapped. A heuristic, applied once at export; `generator` is in eval mode."""
    values = [border_mean(generator(*make_inputs()).mask).mean() for _ in range(batches)]
    if torch.stack(values).mean() > 0.5:
        generator.swap_foreground_background_()
        return True
    return False


def prepare_for_export(g_ema: Generator, cfg: Config) -> dict:
    """Recalibrate and orient G_ema in place; returns what was done, for the logs."""
    device = next(g_ema.parameters()).device

    def codes():
        return sample_codes(cfg.stage1.batch_size, cfg.model, device=device)[:3]

    recalibrate_batchnorm(g_ema, codes, cfg.stage1.bn_recalibration_batches)
    swapped = orient_foreground(g_ema, codes) if cfg.stage1.orient_mask else False
    return {"bn_recalibrated": cfg.stage1.bn_recalibration_batches > 0, "swapped_fg_bg": swapped}
