"""Segmentation metrics: IoU and Dice, strict and in the paper's convention, plus baselines."""
from __future__ import annotations

import math

import torch


def iou_dice(pred: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image IoU and Dice of binary masks [B, 1, H, W]; two empty masks score 1."""
    pred, gt = pred.flatten(1).bool(), gt.flatten(1).bool()
    inter = (pred & gt).sum(1).float()
    union = (pred | gt).sum(1).float()
    total = pred.sum(1).float() + gt.sum(1).float()
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    dice = torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total))
    return iou, dice


def segmentation_scores(pred: torch.Tensor, gt: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image scores of binary predictions.

    strict: the prediction is the foreground. paper: each image is scored as the better of the
    prediction and its complement (the convention of the authors' evaluation code); Dice is
    taken from the same choice as IoU.
    """
    iou, dice = iou_dice(pred, gt)
    iou_c, dice_c = iou_dice(~pred.bool(), gt)
    flip = iou_c > iou
    return {
        "iou_strict": iou, "dice_strict": dice,
        "iou_paper": torch.where(flip, iou_c, iou), "dice_paper": torch.where(flip, dice_c, dice),
    }


def all_foreground_baseline(gt: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(gt, dtype=torch.bool)


def centred_box_baseline(gt: torch.Tensor, area_fraction: float) -> torch.Tensor:
    """A centred square covering `area_fraction` of the image (e.g. the mean foreground area)."""
    h, w = gt.shape[-2:]
    side_h = min(h, max(1, round(math.sqrt(area_fraction) * h)))
    side_w = min(w, max(1, round(math.sqrt(area_fraction) * w)))
    box = torch.zeros_like(gt, dtype=torch.bool)
    top, left = (h - side_h) // 2, (w - side_w) // 2
    box[..., top:top + side_h, left:left + side_w] = True
    return box


def border_mean(mask: torch.Tensor, width: int = 1) -> torch.Tensor:
    """Mean mask value on the outer frame of `width` pixels, per image."""
    frame = torch.ones_like(mask[0, 0], dtype=torch.bool)
    frame[width:-width, width:-width] = False
    return mask[:, 0][:, frame].mean(1)


def mask_statistics(mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Cheap health signs of generated masks: collapse shows as mean near 0/1 or no binary pixels."""
    return {
        "mask/mean": mask.mean(),
        "mask/near0": (mask < 0.1).float().mean(),
        "mask/near1": (mask > 0.9).float().mean(),
        # Samples whose mask is (almost) empty: the background branch drew the whole image.
        "mask/empty_fraction": (mask.flatten(1).mean(1) < 0.02).float().mean(),
    }


# ---------------------------------------------------------------------------------------------
# Image quality: FID and IS from a detector's features and class probabilities


def feature_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance (unbiased) of features [N, D], in float64 as FID needs."""
    x = features.double()
    return x.mean(0), torch.cov(x.T)


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)).

    tr((S1 S2)^(1/2)) is the sum of the square roots of the eigenvalues of S1 S2, which are real and
    non-negative for covariance matrices; round-off can make tiny ones negative or complex, so
    only the real part of the root is kept, the way scipy.linalg.sqrtm-based FID code does."""
    root_trace = torch.linalg.eigvals(sigma1 @ sigma2).sqrt().real.sum()
    return float((mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * root_trace)


def inception_score(probs: torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) || p(y))) over `splits` equal parts of the samples: (mean, std).
    Uniform predictions score 1; confident predictions spread evenly over K classes score K."""
    p = probs.double().clamp_min(1e-12)
    scores = []
    for part in p.chunk(max(1, min(splits, len(p)))):
        kl = (part * (part.log() - part.mean(0, keepdim=True).log())).sum(1).mean()
        scores.append(kl.exp())
    scores = torch.stack(scores)
    return float(scores.mean()), float(scores.std(unbiased=False))
