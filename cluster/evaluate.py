"""Evaluate an exported segmenter on held-out images with ground-truth masks.

Scores are the mean over images of IoU and Dice, strict (the prediction is the foreground) and
in the paper's convention (each image scored as the better of the prediction and its
complement), next to two trivial baselines on the same images: an all-foreground mask and a
centred box covering the mean foreground area of the evaluation set.
"""
from __future__ import annotations

import io
import json

import torch
from PIL import Image

from comgan.artifacts import from_bytes, load_segmenter
from comgan.metrics import all_foreground_baseline, centred_box_baseline, segmentation_scores
from comgan.visualize import grid_to_uint8, image_grid
from data_shards.io import read_bytes, write_bytes
from data_shards.reader import DatasetError, ProblemLog, eval_batches

METHODS = ("segmenter", "all_foreground", "centred_box")


@torch.no_grad()
def evaluate(segmenter_url: str, eval_url: str, resolution: int, batch_size: int = 64,
             threshold: float = 0.5) -> tuple[dict, torch.Tensor]:
    """Returns (results, PNG grid of real image / ground truth / prediction for 8 images)."""
    segmenter, _ = load_segmenter(from_bytes(read_bytes(segmenter_url), segmenter_url), what=segmenter_url)
    problems = ProblemLog()
    batches = [(images, masks > 0.5, segmenter(images) > threshold)
               for images, masks in eval_batches(eval_url, batch_size, resolution=resolution, problems=problems)]
    if not batches:
        raise DatasetError(f"{eval_url}: no usable evaluation sample (bad samples: {problems.total})")
    gts = torch.cat([g for _, g, _ in batches])
    preds = {"segmenter": torch.cat([p for _, _, p in batches])}
    mean_area = gts.float().mean().item()
    preds["all_foreground"] = all_foreground_baseline(gts)
    preds["centred_box"] = centred_box_baseline(gts, mean_area)
    results = {"num_images": int(gts.shape[0]), "mean_foreground_area": mean_area, "threshold": threshold,
               "data_problems": dict(problems.total)}
    for method, pred in preds.items():
        results[method] = {k: v.mean().item() for k, v in segmentation_scores(pred, gts).items()}
    images, gt, pred = batches[0]
    n = min(8, images.shape[0])
    grid = image_grid([images[:n], gt[:n].float(), pred[:n].float()])
    return results, grid


def save_report(results: dict, grid: torch.Tensor, json_url: str, png_url: str) -> None:
    write_bytes(json_url, (json.dumps(results, indent=2) + "\n").encode())
    buf = io.BytesIO()
    Image.fromarray(grid_to_uint8(grid)).save(buf, format="PNG")
    write_bytes(png_url, buf.getvalue())


def format_table(results: dict) -> str:
    lines = [f"Segmentation on {results['num_images']} held-out images "
             f"(mean foreground area {100 * results['mean_foreground_area']:.1f} %):",
             f"  {'method':<16}{'IoU strict':>12}{'Dice strict':>13}{'IoU paper*':>12}{'Dice paper*':>13}"]
    for method in METHODS:
        r = results[method]
        lines.append(f"  {method:<16}{r['iou_strict']:>12.3f}{r['dice_strict']:>13.3f}"
                     f"{r['iou_paper']:>12.3f}{r['dice_paper']:>13.3f}")
    lines.append("  * paper convention: each image scored as the better of the prediction and its complement")
    return "\n".join(lines)
