"""Evaluate an exported segmenter on held-out images with ground-truth masks.

Scores are IoU and Dice per image and their means, strict (the prediction is the foreground) and
in the paper's convention (each image scored as the better of the prediction and its
complement), next to baselines scored on the same images in the same geometry: an all-foreground
mask, a centred box covering the mean foreground area of the evaluation set, and optionally
GrabCut (cluster/baselines.py).

Scoring resolution: by default the segmenter's own; with `score_resolution` (e.g. 128 for a
64 px model) images and masks are read at that size, the segmenter sees them resized to its
resolution, and its mask probabilities are upsampled back before thresholding, so every method is
scored against the same full-size ground truth.

Large sets: with `workers` > 0 the shards are split into that many parts, each scored by a Ray
task (a local cluster, or the one RAY_ADDRESS names). A part returns per-image scores and its
ground-truth masks bit-packed (2 KB an image at 128 px): the centred box needs the whole set's
mean foreground area, so it is scored once all parts are back.
"""
from __future__ import annotations

import io
import json

import numpy as np
import torch
from PIL import Image

from comgan.artifacts import from_bytes, load_segmenter
from comgan.inference import predict
from comgan.metrics import (
    all_foreground_baseline,
    centred_box_baseline,
    segmentation_scores,
)
from comgan.visualize import grid_to_uint8, image_grid
from data_shards.index import DatasetError
from data_shards.io import read_bytes, redacted, write_bytes
from data_shards.problems import ProblemLog
from data_shards.reader import eval_batches

from . import placement
from .baselines import grabcut_batch

METHODS = ("segmenter", "grabcut", "all_foreground", "centred_box")
GRID_IMAGES = 8


@torch.no_grad()
def score_part(segmenter_url: str, eval_url: str, part: int, parts: int, batch_size: int, threshold: float,
               score_resolution: int | None, grabcut: bool, flip: bool, colour: bool = False) -> dict:
    """Per-image scores of the segmenter (and GrabCut) on one part of the set, its keys, its
    ground truth bit-packed, and its first images and predictions for the grid."""
    segmenter, model = load_segmenter(from_bytes(read_bytes(segmenter_url), segmenter_url), what=segmenter_url)
    problems = ProblemLog()
    scored_at = score_resolution or model.resolution
    keys, packed, shown = [], [], []
    scores: dict[str, list[dict]] = {"segmenter": []} | ({"grabcut": []} if grabcut else {})
    for images, masks, batch_keys in eval_batches(eval_url, batch_size, resolution=scored_at, problems=problems,
                                                  part=part, parts=parts, keys=True):
        gt = masks > 0.5
        preds = {"segmenter": predict(segmenter, images, model.resolution, threshold, flip, colour)}
        if grabcut:
            preds["grabcut"] = grabcut_batch(images)
        for method, pred in preds.items():
            scores[method].append(segmentation_scores(pred, gt))
        if len(shown) < GRID_IMAGES:
            take = GRID_IMAGES - len(shown)
            shown += list(zip(images[:take], gt[:take].float(), preds["segmenter"][:take].float()))
        keys += batch_keys
        packed.append(np.packbits(gt.numpy().reshape(len(gt), -1), axis=1))
    return {"keys": keys, "scores": {m: _concat(s) for m, s in scores.items()},
            "gt": np.concatenate(packed) if packed else np.zeros((0, 0), np.uint8), "size": scored_at,
            "shown": shown, "problems": dict(problems.total), "model_resolution": model.resolution}


def _concat(batches: list[dict]) -> dict[str, torch.Tensor]:
    return {k: torch.cat([b[k] for b in batches]) for k in batches[0]} if batches else {}


def _run_parts(args: tuple, workers: int) -> list[dict]:
    if workers <= 0:
        return [score_part(*args[:2], 0, 1, *args[2:])]
    import ray  # only with workers: scoring in this process never loads Ray

    placement.init_ray()
    task = ray.remote(num_cpus=1)(score_part)
    return ray.get([task.remote(*args[:2], part, workers, *args[2:]) for part in range(workers)])


def _merge_problems(parts: list[dict]) -> dict:
    total: dict[str, int] = {}
    for p in parts:
        for k, v in p["problems"].items():
            total[k] = total.get(k, 0) + v
    return total


def evaluate(segmenter_url: str, eval_url: str, batch_size: int = 64, threshold: float = 0.5,
             score_resolution: int | None = None, grabcut: bool = False, workers: int = 0,
             flip: bool = False, colour: bool = False) -> tuple[dict, torch.Tensor]:
    """Returns (results, PNG grid of real image / ground truth / prediction for 8 images). The
    segmenter's own resolution comes from its artifact; flip averages its masks of each image and
    of its mirror image (inference.mirror_averaged); colour refines them with each image's colours
    at the scoring size (comgan.refine). results holds the means per method and, under
    "per_image", every image's key and scores."""
    parts = _run_parts((segmenter_url, eval_url, batch_size, threshold, score_resolution, grabcut, flip, colour),
                       workers)
    problems = _merge_problems(parts)
    parts = [p for p in parts if p["keys"]]
    if not parts:
        raise DatasetError(f"{eval_url}: no usable evaluation sample (skipped: {problems})")
    size = parts[0]["size"]
    gt = torch.from_numpy(np.unpackbits(np.concatenate([p["gt"] for p in parts]), axis=1, count=size * size))
    gt = gt.view(-1, 1, size, size).bool()
    per_method = {m: {k: torch.cat([p["scores"][m][k] for p in parts]) for k in parts[0]["scores"][m]}
                  for m in parts[0]["scores"]}
    mean_area = gt.float().mean().item()
    per_method["all_foreground"] = segmentation_scores(all_foreground_baseline(gt), gt)
    per_method["centred_box"] = segmentation_scores(centred_box_baseline(gt, mean_area), gt)
    keys = [k for p in parts for k in p["keys"]]
    results = {"num_images": len(keys), "mean_foreground_area": mean_area, "threshold": threshold,
               "model_resolution": parts[0]["model_resolution"], "score_resolution": size, "flip": flip,
               "colour_refine": colour,
               "data_problems": problems}
    methods = [m for m in METHODS if m in per_method]
    for m in methods:
        results[m] = {k: v.mean().item() for k, v in per_method[m].items()}
    results["per_image"] = [{"key": key, **{m: {k: round(v[i].item(), 5) for k, v in per_method[m].items()}
                                            for m in methods}} for i, key in enumerate(keys)]
    shown = [s for p in parts for s in p["shown"]][:GRID_IMAGES]
    grid = image_grid([torch.stack(column) for column in zip(*shown)])
    return results, grid


def save_report(results: dict, grid: torch.Tensor, json_url: str, png_url: str) -> None:
    write_bytes(json_url, (json.dumps(redacted(results), indent=2) + "\n").encode())  # URLs without credentials
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
        name = method
        if method == "segmenter":
            name += "+flip" * bool(results.get("flip")) + "+colour" * bool(results.get("colour_refine"))
        lines.append(f"  {name:<16}{r['iou_strict']:>12.3f}{r['dice_strict']:>13.3f}"
                     f"{r['iou_paper']:>12.3f}{r['dice_paper']:>13.3f}")
    lines.append("  * paper convention: each image scored as the better of the prediction and its complement")
    return "\n".join(lines)
