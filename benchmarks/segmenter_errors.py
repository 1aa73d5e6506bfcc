"""Where a segmenter goes wrong on labelled images: precision and recall, predicted against true
area, false positives and negatives by band of rows (above a horse's back? its legs?), and what
cheap inference-time changes would do (a test-time flip, keeping the largest connected
component, filling holes), all at one scoring resolution.

    python benchmarks/segmenter_errors.py benchmarks/out/horses/runs/horses-bf16/stage2/segmenter.pt \
        --data benchmarks/out/horses/shards/eval-128px-holdout0 --resolution 128
    python benchmarks/segmenter_errors.py runs/default/stage2/segmenter.pt --data data_shards/synthetic/eval

Needs OpenCV (installed with the project) for the connected components.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from comgan.artifacts import from_bytes, load_segmenter  # noqa: E402
from comgan.inference import probabilities  # noqa: E402
from comgan.metrics import segmentation_scores  # noqa: E402
from data_shards.io import read_bytes  # noqa: E402
from data_shards.reader import eval_batches  # noqa: E402

BANDS = 8


def largest_component(masks: np.ndarray) -> np.ndarray:
    out = np.zeros_like(masks)
    for i, m in enumerate(masks):
        n, labels, stats, _ = cv2.connectedComponentsWithStats(m.astype(np.uint8), connectivity=8)
        if n > 1:
            out[i] = labels == 1 + np.argmax(stats[1:, cv2.CC_STAT_AREA])
    return out


def holes_filled(masks: np.ndarray) -> np.ndarray:
    out = masks.copy()
    for i, m in enumerate(masks):
        n, labels = cv2.connectedComponents((~m).astype(np.uint8), connectivity=4)
        edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        out[i] |= np.isin(labels, np.setdiff1d(np.arange(1, n), edge))
    return out


def error_profile(pred: torch.Tensor, gt: torch.Tensor) -> dict:
    """Means over images; an image with an empty prediction counts precision 0, one with an
    empty truth recall 0 (as the strict IoU scores them)."""
    tp, fp, fn = ((pred & gt), (pred & ~gt), (~pred & gt))
    count = lambda x: x.flatten(1).sum(1).float()  # noqa: E731
    rows = lambda x: [round(b.mean().item(), 4) for b in x.float().mean((0, 1, 3)).chunk(BANDS)]  # noqa: E731
    return {"iou_strict": segmentation_scores(pred, gt)["iou_strict"].mean().item(),
            "precision": (count(tp) / count(tp + fp).clamp(min=1)).mean().item(),
            "recall": (count(tp) / count(tp + fn).clamp(min=1)).mean().item(),
            "predicted_area": pred.float().mean().item(), "true_area": gt.float().mean().item(),
            "false_positives_by_row_band": rows(fp), "false_negatives_by_row_band": rows(fn)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("segmenter", help="a segmenter.pt (path or URL)")
    p.add_argument("--data", required=True, help="labelled evaluation shards")
    p.add_argument("--resolution", type=int, default=0, help="score at this size (default: the segmenter's)")
    p.add_argument("--out", help="write the results as JSON here")
    a = p.parse_args()
    net, model = load_segmenter(from_bytes(read_bytes(a.segmenter), a.segmenter), what=a.segmenter)
    net.eval()
    size = a.resolution or model.resolution
    images, truth = zip(*eval_batches(a.data, 64, resolution=size))
    images, gt = torch.cat(images), torch.cat(truth) > 0.5
    plain = torch.cat([probabilities(net, x, model.resolution) for x in images.split(64)])
    flip = torch.cat([probabilities(net, x, model.resolution, flip=True) for x in images.split(64)])
    results = {"segmenter": a.segmenter, "data": a.data, "score_resolution": size, "num_images": len(gt)}
    for name, probs in (("plain", plain), ("flip", flip)):
        binary = (probs > 0.5)[:, 0].numpy()
        for post, fn in (("", None), ("+largest_component", largest_component), ("+holes_filled", holes_filled)):
            pred = torch.from_numpy(fn(binary) if fn else binary)[:, None]
            results[name + post] = error_profile(pred, gt)
    for name, r in results.items():
        if isinstance(r, dict):
            print(f"{name:<26} IoU {r['iou_strict']:.3f}  precision {r['precision']:.3f}  recall {r['recall']:.3f}  "
                  f"area {r['predicted_area']:.3f} (true {r['true_area']:.3f})")
    print("plain, by band of rows from the top: false positives", results["plain"]["false_positives_by_row_band"])
    print("                                     false negatives", results["plain"]["false_negatives_by_row_band"])
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
