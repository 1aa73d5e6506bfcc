"""Would edge-aware masks help? Scores a segmenter's masks on labelled photos plain and after two
refinements that snap a mask to the photo's own edges, to decide what self-training's
pseudo-labels should be (the teacher's masks are blurry where the horses' legs and backs are):

- the colour model of comgan/refine.py (what stage2.self_train.colour_bins and --colour-refine use);
- guided filter (He et al., 2010): the mask's probabilities filtered with the photo as guide
  (radius r, regulariser eps), at the segmenter's trained size or at the scoring size;
- GrabCut initialised with the mask (sure foreground / background where the mask is confident,
  "probably" elsewhere), 5 iterations, at the scoring size.

    python benchmarks/refine_probe.py benchmarks/out/horses/runs/horses-NAME/stage2/segmenter.pt \
        --data benchmarks/out/horses/shards/eval-128px-holdout0 --resolution 128
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from comgan.artifacts import from_bytes, load_segmenter  # noqa: E402
from comgan.inference import probabilities  # noqa: E402
from comgan.metrics import segmentation_scores  # noqa: E402
from comgan.refine import colour_refined  # noqa: E402
from data_shards.io import read_bytes  # noqa: E402
from data_shards.reader import eval_batches  # noqa: E402


def box(x: torch.Tensor, r: int) -> torch.Tensor:
    return F.avg_pool2d(F.pad(x, [r] * 4, mode="replicate"), 2 * r + 1, stride=1)


def guided(guide: torch.Tensor, p: torch.Tensor, r: int, eps: float) -> torch.Tensor:
    """Grey-guide guided filter of p [B, 1, H, W] by guide [B, 3, H, W] in [-1, 1]."""
    g = guide.mean(1, keepdim=True)
    mean_g, mean_p = box(g, r), box(p, r)
    a = (box(g * p, r) - mean_g * mean_p) / (box(g * g, r) - mean_g ** 2 + eps)
    b = mean_p - a * mean_g
    return (box(a, r) * g + box(b, r)).clamp(0, 1)


def grabcut_from(image: np.ndarray, prob: np.ndarray, sure: float) -> np.ndarray:
    mask = np.where(prob > 0.5, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
    mask[prob > sure] = cv2.GC_FGD
    mask[prob < 1 - sure] = cv2.GC_BGD
    if not ((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)).any():
        return prob > 0.5
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    try:
        cv2.grabCut(np.ascontiguousarray(image[:, :, ::-1]), mask, None, bgd, fgd, 5, cv2.GC_INIT_WITH_MASK)
    except cv2.error:
        return prob > 0.5
    return (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("segmenter")
    p.add_argument("--data", required=True)
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--out")
    a = p.parse_args()
    net, model = load_segmenter(from_bytes(read_bytes(a.segmenter), a.segmenter), what=a.segmenter)
    net.eval()
    images, truth = zip(*eval_batches(a.data, 64, resolution=a.resolution))
    images, gt = torch.cat(images), torch.cat(truth) > 0.5
    probs = torch.cat([probabilities(net, x, model.resolution, flip=True) for x in images.split(64)])
    small = F.interpolate(images, size=model.resolution, mode="bilinear", antialias=True, align_corners=False)
    probs_small = torch.cat([probabilities(net, x, model.resolution, flip=True) for x in small.split(64)])

    def score(pred):
        return round(segmentation_scores(pred, gt)["iou_strict"].mean().item(), 4)

    def up(x):
        return F.interpolate(x, size=a.resolution, mode="bilinear", align_corners=False)

    rows = {"plain (flip)": score(probs > 0.5)}
    for r in (1, 2, 4):
        for eps in (1e-3, 1e-2, 1e-1):
            rows[f"guided at {model.resolution} px r={r} eps={eps}"] = score(up(guided(small, probs_small, r, eps)) > 0.5)
            rows[f"guided at {a.resolution} px r={2 * r} eps={eps}"] = score(guided(images, probs, 2 * r, eps) > 0.5)
    for bins in (4, 8, 16):
        for sure in (0.7, 0.9):
            rows[f"colour model at {model.resolution} px bins={bins} sure={sure}"] = score(
                up(colour_refined(small, probs_small, bins, sure)) > 0.5)
            rows[f"colour model at {a.resolution} px bins={bins} sure={sure}"] = score(
                colour_refined(images, probs, bins, sure) > 0.5)
    rgb = ((images.permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
    for sure in (0.9, 0.97):
        cut = np.stack([grabcut_from(img, pr[0].numpy(), sure) for img, pr in zip(rgb, probs)])
        rows[f"grabcut from mask, sure > {sure}"] = score(torch.from_numpy(cut)[:, None])
    for name, value in rows.items():
        print(f"{value:.4f}  {name}")
    if a.out:
        Path(a.out).write_text(json.dumps({"segmenter": a.segmenter, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
