"""Loss terms of both stages (paper eqs. 8-12). Discriminators output logits, so the adversarial
terms use BCE-with-logits (the reference's sigmoid + BCE, without its numerical edge)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .metrics import border_mean


def bce_real(logits: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))


def bce_fake(logits: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits))


def binary_entropy(mask: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Mean pixel-wise H2(p) = -p log2 p - (1-p) log2 (1-p): 1 for grey masks, 0 for binary ones.
    In fp32 whatever the mask's dtype: under bf16 autocast 1 - 1e-6 rounds to 1, and a saturated
    pixel gave 0 * log2(0) = NaN (a bf16 default run turned NaN within its first ticks)."""
    p = mask.float().clamp(eps, 1 - eps)
    return -(p * torch.log2(p) + (1 - p) * torch.log2(1 - p)).mean()


# The area hinge's lower bound: forbids only (nearly) empty masks. Never a setting that mattered:
# the live generator draws the scene with F, so only the upper bound acts (0.1 gave the same run).
MASK_AREA_MIN = 0.05


def mask_area_hinge(mask: torch.Tensor, max_area: float = 1 - MASK_AREA_MIN) -> torch.Tensor:
    """Mean over images of how far each mask's area falls outside [MASK_AREA_MIN, max_area]; a
    max_area under MASK_AREA_MIN lowers the floor with it (masks held under it: nearly empty).

    Not in the paper. F and B are symmetric, so the default bounds are too: they forbid only the
    degenerate all-background / all-foreground masks with which one branch draws whole objects
    (seen: a foreground style drawn by B under an empty mask), and leave every plausible area free.
    A lower max_area is a prior that objects are the smaller part of the picture."""
    min_area = min(MASK_AREA_MIN, max_area)
    area = mask.flatten(1).mean(1)
    return (F.relu(min_area - area) + F.relu(area - max_area)).mean()


def mask_border_share(mask: torch.Tensor, ring: float) -> torch.Tensor:
    """Per image, the mean of the mask over the frame's outer ring, `ring` of the side wide (at least
    one pixel): [B]."""
    return border_mean(mask, max(1, round(ring * min(mask.shape[-2:]))))


def mask_border_loss(mask: torch.Tensor, ring: float) -> torch.Tensor:
    """Mean over images of min(s, 1 - s), s the mask's share of the frame's outer ring: 0 when one
    layer owns the whole ring, 0.5 when they split it.

    Not in the paper. The background prior of saliency detection (what touches the frame is
    mostly background), written so that it does not care which layer is the object: F and B stay
    interchangeable, as the export's orientation (border coverage) expects. Seen on the horses
    without it: one layer draws the horse and the sky, the other the ground and the legs."""
    share = mask_border_share(mask.float(), ring)
    return torch.minimum(share, 1 - share).mean()


def info_loss(logits: torch.Tensor, target_idx: torch.Tensor) -> torch.Tensor:
    """InfoGAN-style code recovery: cross-entropy of D_f / D_b against the sampled category."""
    return F.cross_entropy(logits, target_idx)


def consistency_loss(pred_mask: torch.Tensor, gen_mask: torch.Tensor) -> torch.Tensor:
    """L_cons (eq. 10): L1 between S(x_bar) and the generator's own mask x_bar_m."""
    return (pred_mask - gen_mask).abs().mean()


def pseudo_label_loss(pred_mask: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                      eps: float = 1e-6) -> torch.Tensor:
    """Binary cross-entropy of S's mask against a binary pseudo-label over the pixels where
    `weight` is 1 (the teacher's confident ones): their mean, 0 when there are none. Written out
    in fp32: F.binary_cross_entropy refuses autocast, and 1 - 1e-6 rounds to 1 in bf16."""
    p, t, w = pred_mask.float().clamp(eps, 1 - eps), target.float(), weight.float()
    bce = -(t * torch.log(p) + (1 - t) * torch.log(1 - p))
    return (bce * w).sum() / w.sum().clamp(min=1)
