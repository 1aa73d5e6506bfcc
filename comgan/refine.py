"""Colour-aware refinement of soft masks: each image's own colours correct where its mask is unsure.

A segmenter trained on generated images draws blurry masks on photos: blobs over textured
background above a horse's back, thin legs missed. Within one photo, though, the object and the
background usually differ in colour. For each image, colour histograms (bins^3 cells) are built
from the pixels the mask is confident about, foreground and background apart; each pixel's
probability is then combined with its colour's foreground share (naive Bayes, as odds), the
colour model of GrabCut without its graph cut. Pure tensor ops, batched, no learning.
On the 200 Weizmann horses, applied to a trained segmenter's masks (8 bins, confidence 0.9):
strict IoU 0.627 -> 0.660 at the trained 64 px, 0.671 on the 128 px photos; used on the
self-training teacher's masks, the segmenter itself gains 0.021 (benchmarks/results/README.md).
"""
from __future__ import annotations

import torch

SMOOTHING = 0.5  # pseudo-count per cell: a colour seen in neither set has a share of 1/2


def colour_refined(images: torch.Tensor, probs: torch.Tensor, bins: int = 8, confidence: float = 0.9) -> torch.Tensor:
    """probs [B, 1, H, W] in (0, 1) refined by each image's colours; images [B, 3, H, W] in [-1, 1].
    Pixels with probs > confidence (< 1 - confidence) build the foreground (background) histogram."""
    n = images.shape[0]
    p = probs.float().clamp(1e-4, 1 - 1e-4)
    q = ((images.float().clamp(-1, 1) + 1) / 2 * (bins - 1e-3)).long()  # colour cell per channel
    cell = ((q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]).flatten(1)      # B, H*W
    flat = p.flatten(1)

    def histogram(selected: torch.Tensor) -> torch.Tensor:
        h = torch.full((n, bins ** 3), SMOOTHING, device=p.device).scatter_add_(1, cell, selected.float())
        return h / h.sum(1, keepdim=True)

    fg, bg = histogram(flat > confidence), histogram(flat < 1 - confidence)
    share = (fg / (fg + bg)).gather(1, cell).view_as(p)
    odds = p / (1 - p) * share / (1 - share)
    return (odds / (1 + odds)).to(probs.dtype)
