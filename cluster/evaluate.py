"""Evaluate an exported segmenter on held-out images with ground-truth masks.

Scores are the mean over images of IoU and Dice, strict (the prediction is the foreground) and
in the paper's convention (each image scored as the better of the prediction and its
complement), next to baselines scored on the same images in the same geometry: an all-foreground
mask, a centred box covering the mean foreground area of the evaluation set, and optionally
GrabCut (cluster/baselines.py).

Scoring resolution: by default the segmenter's own; with `score_resolution` (e.g. 128 for a
64 px model) images and masks are read at that size, the segmenter sees them resized to its
resolution, and its mask probabilities are upsampled back before thresholding, so every method is
scored against the same full-size ground truth.
"""
from __future__ import annotations

import io
import json

import torch
import torch.nn.functional as F
from PIL import Image

from comgan.artifacts import from_bytes, load_segmenter
from comgan.metrics import all_foreground_baseline, centred_box_baseline, segmentation_scores
from comgan.visualize import grid_to_uint8, image_grid
from data_shards.io import read_bytes, write_bytes
from data_shards.reader import DatasetError, ProblemLog, eval_batches

from .baselines import grabcut_batch

METHODS = ("segmenter", "grabcut", "all_foreground", "centred_box")


@torch.no_grad()
def predict(segmenter: torch.nn.Module, images: torch.Tensor, resolution: int, threshold: float) -> torch.Tensor:
    """Binary masks at the images' size from a segmenter trained at `resolution`."""
    size = images.shape[-2:]
    if tuple(size) != (resolution, resolution):
        images = F.interpolate(images, size=(resolution, resolution), mode="bilinear", antialias=True,
                               align_corners=False)
    probs = segmenter(images)
    if tuple(probs.shape[-2:]) != tuple(size):
        probs = F.interpolate(probs, size=size, mode="bilinear", align_corners=False)
    return probs > threshold


@torch.no_grad()
def evaluate(segmenter_url: str, eval_url: str, batch_size: int = 64, threshold: float = 0.5,
             score_resolution: int | None = None, grabcut: bool = False) -> tuple[dict, torch.Tensor]:
    """Returns (results, PNG grid of real image / ground truth / prediction for 8 images). The
    segmenter's own resolution comes from its artifact."""
    segmenter, model = load_segmenter(from_bytes(read_bytes(segmenter_url), segmenter_url), what=segmenter_url)
    resolution = model.resolution
    problems = ProblemLog()
    scored_at = score_resolution or resolution
    shown, gts, preds = [], [], {"segmenter": []}  # shown: the first 8 images, for the grid
    for batch, masks in eval_batches(eval_url, batch_size, resolution=scored_at, problems=problems):
        shown.append(batch[: max(0, 8 - sum(len(b) for b in shown))])
        gts.append(masks > 0.5)
        preds["segmenter"].append(predict(segmenter, batch, resolution, threshold))
        if grabcut:
            preds.setdefault("grabcut", []).append(grabcut_batch(batch))
    if not gts:
        raise DatasetError(f"{eval_url}: no usable evaluation sample (bad samples: {problems.total})")
    gt = torch.cat(gts)
    preds = {method: torch.cat(p) for method, p in preds.items()}
    mean_area = gt.float().mean().item()
    preds["all_foreground"] = all_foreground_baseline(gt)
    preds["centred_box"] = centred_box_baseline(gt, mean_area)
    results = {"num_images": int(gt.shape[0]), "mean_foreground_area": mean_area, "threshold": threshold,
               "model_resolution": resolution, "score_resolution": scored_at, "data_problems": dict(problems.total)}
    for method in METHODS:
        if method in preds:
            results[method] = {k: v.mean().item() for k, v in segmentation_scores(preds[method], gt).items()}
    shown = torch.cat(shown)
    n = len(shown)
    grid = image_grid([shown, gt[:n].float(), preds["segmenter"][:n].float()])
    return results, grid


def save_report(results: dict, grid: torch.Tensor, json_url: str, png_url: str) -> None:
    write_bytes(json_url, (json.dumps(results, indent=2) + "\n").encode())
    buf = io.BytesIO()
    Image.fromarray(grid_to_uint8(grid)).save(buf, format="PNG")
    write_bytes(png_url, buf.getvalue())


def format_table(results: dict) -> str:
    at = results.get("score_resolution")
    lines = [f"Segmentation of {results['num_images']} labelled images"
             f"{f' at {at} px' if at else ''} (mean foreground area {100 * results['mean_foreground_area']:.1f} %):",
             f"  {'method':<16}{'IoU strict':>12}{'Dice strict':>13}{'IoU paper*':>12}{'Dice paper*':>13}"]
    for method in METHODS:
        if method not in results:
            continue
        r = results[method]
        lines.append(f"  {method:<16}{r['iou_strict']:>12.3f}{r['dice_strict']:>13.3f}"
                     f"{r['iou_paper']:>12.3f}{r['dice_paper']:>13.3f}")
    lines.append("  * paper convention: each image scored as the better of the prediction and its complement")
    return "\n".join(lines)
