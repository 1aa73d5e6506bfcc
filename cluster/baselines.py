"""Segmentation baselines that need no training, scored by the same evaluation code as the
segmenter on the same images and geometry: GrabCut (OpenCV), all-foreground and a centred box.

GrabCut is the classic unsupervised reference: initialised with a rectangle inset 5 % from each
side (the object is assumed to be inside, the frame to be background), 5 iterations. It needs
enough pixels to fit its colour models and collapses at low resolution, so compare at 128 px.
"""
from __future__ import annotations

import numpy as np
import torch

GRABCUT_INSET = 0.05
GRABCUT_ITERATIONS = 5


def grabcut(image: np.ndarray, inset: float = GRABCUT_INSET, iterations: int = GRABCUT_ITERATIONS) -> np.ndarray:
    """Foreground mask (bool [H, W]) of one RGB uint8 image [H, W, 3] by rectangle-initialised GrabCut.
    A degenerate result (GrabCut gives up on a flat image) counts as the rectangle itself."""
    import cv2  # a baseline-only dependency; imported when used

    h, w = image.shape[:2]
    dx, dy = max(1, round(inset * w)), max(1, round(inset * h))
    rect = (dx, dy, max(1, w - 2 * dx), max(1, h - 2 * dy))
    mask = np.zeros((h, w), np.uint8)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    try:
        cv2.grabCut(np.ascontiguousarray(image[:, :, ::-1]), mask, rect, bgd, fgd, iterations, cv2.GC_INIT_WITH_RECT)
    except cv2.error:
        mask[dy:dy + rect[3], dx:dx + rect[2]] = cv2.GC_PR_FGD
    return (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)


def grabcut_batch(images: torch.Tensor) -> torch.Tensor:
    """GrabCut over a batch of [-1, 1] images [B, 3, H, W]: bool masks [B, 1, H, W]."""
    rgb = ((images.detach().cpu().permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
    return torch.from_numpy(np.stack([grabcut(img) for img in rgb]))[:, None]
