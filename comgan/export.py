"""What happens to G_ema between the end of stage 1 and the handoff artifact, and the checks of it.

1. Its BatchNorm statistics are re-estimated for the averaged weights.
2. Its mask is oriented to cover the object: F and B are symmetric, so a run can learn the
   background's mask; the border prior decides and the roles are swapped exactly if needed.
3. Its mask statistics over a fixed set of codes are recorded (collapse and empty masks show).

Every pass here is no-grad and runs in chunks of `chunk` images, so memory is bounded by the
chunk whatever the number of samples (at the paper config one image costs about 70 MB of
activations; tests/comgan/test_export_memory.py).
Codes come from generators seeded here, never from the training random stream, so exporting (or
not) cannot change what training does, and the same weights export to the same artifact.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from .config import ComGANConfig
from .metrics import border_mean, mask_statistics
from .networks import Generator, sample_codes

RECALIBRATION_SEED, ORIENTATION_SEED, HEALTH_SEED = 101, 202, 99
BN_RECALIBRATION_BATCHES = 20  # stage-1 batches of fresh codes that re-estimate G_ema's BatchNorm statistics


def chunk_sizes(n: int, chunk: int) -> list[int]:
    """n split into pieces of at most `chunk` (the last may be smaller)."""
    return [min(chunk, n - i) for i in range(0, n, max(1, chunk))]


def code_batches(cfg: ComGANConfig, n: int, chunk: int, seed: int, device) -> list:
    """(z, f, b) of n fixed codes in chunks: the same codes whatever the chunk size."""
    z, f, b, _, _ = sample_codes(n, cfg.model, device=device, generator=torch.Generator(device).manual_seed(seed))
    return [(z[i:i + k], f[i:i + k], b[i:i + k]) for i, k in zip(range(0, n, max(1, chunk)), chunk_sizes(n, chunk))]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches) -> None:
    """Re-estimate BatchNorm running statistics for the averaged weights.

    The running statistics copied from the live generator belong to other weights than the EMA's;
    eval-mode samples then drift in colour and mask sharpness. A cumulative average over fresh
    batches (momentum=None) fixes that; `batches` holds the forward arguments of each batch.
    Not torch.optim.swa_utils.update_bn: it calls model(batch[0]) (our generator takes z, f, b),
    leaves the model in train mode and resets the statistics even when given no batches.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or not batches:
        return
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for inputs in batches:
        model(*inputs)
    for m, momentum in zip(bns, saved):
        m.momentum = momentum
    model.eval()


@torch.no_grad()
def orient_foreground(generator: nn.Module, batches) -> bool:
    """Make the mask cover the object, not the background: if generated masks mostly cover the
    image border (where backgrounds are and objects rarely are), swap F and B. Returns True if
    it swapped. A heuristic, applied once at export; `generator` is in eval mode."""
    border = torch.cat([border_mean(generator(*inputs).mask) for inputs in batches])
    if border.mean() > 0.5:
        generator.swap_foreground_background_()
        return True
    return False


@torch.no_grad()
def mask_health(generator: nn.Module, cfg: ComGANConfig, samples: int, chunk: int) -> dict[str, float]:
    """Mask statistics of an eval-mode generator over `samples` fixed codes, chunked."""
    device = next(generator.parameters()).device
    masks = torch.cat([generator(*inputs).mask.cpu() for inputs in code_batches(cfg, samples, chunk, HEALTH_SEED,
                                                                                device)])
    return {k: float(v) for k, v in mask_statistics(masks).items()}


def export_generator(g_ema: Generator, cfg: ComGANConfig, chunk: int, health_samples: int = 512,
                     recalibration_batches: int = BN_RECALIBRATION_BATCHES) -> tuple:
    """A recalibrated, oriented copy of G_ema (the training state is left as it was), what was
    done to it, and its mask health: (generator, {"bn_recalibrated", "swapped_fg_bg"}, health)."""
    g = copy.deepcopy(g_ema)
    device = next(g.parameters()).device
    s1 = cfg.stage1
    n = recalibration_batches * s1.batch_size
    # BatchNorm needs two samples per channel in train mode: recalibration chunks hold at least 2.
    recalibrate_batchnorm(g, code_batches(cfg, n, max(2, min(chunk, s1.batch_size)), RECALIBRATION_SEED, device))
    swapped = False
    if s1.orient_mask:
        swapped = orient_foreground(g, code_batches(cfg, 4 * s1.batch_size, chunk, ORIENTATION_SEED, device))
    done = {"bn_recalibrated": n > 0, "swapped_fg_bg": swapped}
    return g, done, mask_health(g, cfg, health_samples, chunk)
