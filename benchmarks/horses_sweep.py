"""Quick recipe search on the Weizmann horses: the pipeline's stage specs in one process, photos in memory.

benchmarks/horses.py measures a recipe the way users run it (jobs/train.py, Ray, shards) and
takes about 35 minutes a variant on 2 CPU cores. This script runs the same steps (STAGES' create,
step and export; the same evaluation geometry: photos squashed to --size, the segmenter's masks
upsampled to it) without Ray or shards, on a GPU when there is one, and several variants at once
(--parallel processes sharing the device), to choose which variants are worth the real benchmark.
The real images are the same 200 photos, resized in memory instead of by the shard reader.

    python benchmarks/horses_sweep.py prepare                       # photos -> benchmarks/out/horses128.npz
    python benchmarks/horses_sweep.py run --variant adv01 stage2.adv_weight=0.1 --variant base
    python benchmarks/horses_sweep.py run --grid stage2.adv_weight=0.1,1 stage1.steps=2000,4000

Writes one JSON line per variant to --out (default benchmarks/results/horses_sweep.jsonl) and,
with --images, each variant's photo/truth/prediction grid and stage-1 samples as PNGs.
"""
from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cluster.config import load_config
from comgan.inference import INFERENCE_BATCH, predict
from comgan.metrics import (
    all_foreground_baseline,
    centred_box_baseline,
    segmentation_scores,
)
from comgan.networks import sample_codes
from comgan.stages import STAGE1, STAGE2
from comgan.visualize import grid_to_uint8, image_grid

DEFAULT_DATA = ROOT / "benchmarks" / "out" / "horses128.npz"


def prepare(source: Path, size: int, out: Path) -> None:
    from PIL import Image

    images = sorted((source / "images").glob("*.jpg"))
    photos = [np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.LANCZOS)) for p in images]
    masks = [np.asarray(Image.open(source / "masks" / f"{p.stem}.png").convert("L").resize((size, size), Image.BILINEAR)) > 127
             for p in images]
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, images=np.stack(photos), masks=np.stack(masks), keys=np.array([p.stem for p in images]))
    print(f"wrote {len(photos)} photos at {size} px to {out}")


def load(path: Path, device) -> tuple[torch.Tensor, torch.Tensor]:
    data = np.load(path)
    images = torch.from_numpy(data["images"]).permute(0, 3, 1, 2).float().div(127.5).sub(1).to(device)
    return images, torch.from_numpy(data["masks"])[:, None].to(device)


def batches(train: torch.Tensor, batch: int, generator: torch.Generator):
    """Endless random batches with random horizontal flips, as the shard reader gives them."""
    while True:
        idx = torch.randint(len(train), (batch,), generator=generator)
        x = train[idx.to(train.device)]
        flip = (torch.rand(batch, generator=generator) < 0.5).to(train.device)
        yield torch.where(flip[:, None, None, None], x.flip(-1), x)


def train_stage(spec, cfg, train, generator=None, seed=0):
    state = spec.create(cfg)
    for module in state.trained().values():  # as the worker does: optimisers keep the same Parameters
        module.to(train.device)
    for name in getattr(state, "CARRIED", ()):
        getattr(state, name).to(train.device)
    step = spec.make_step(state, cfg, generator=generator)
    data = batches(train, spec.settings(cfg).batch_size, torch.Generator().manual_seed(seed))
    stats = {}
    while state.step < spec.settings(cfg).steps:
        stats = step(next(data))
    return state, {k: float(v) for k, v in stats.items()}


def run_variant(name: str, overrides: list[str], data: str, config: str, seed: int, images_dir: str | None) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)
    cfg = load_config(config, overrides)
    photos, gt = load(Path(data), device)
    res = cfg.model.resolution
    train = F.interpolate(photos, size=(res, res), mode="bicubic", antialias=True, align_corners=False).clamp(-1, 1)
    t0 = time.time()
    s1, last1 = train_stage(STAGE1, cfg, train, seed=seed)
    g_artifact, health = STAGE1.export(s1, cfg, INFERENCE_BATCH)
    from comgan.artifacts import load_generator
    g, _ = load_generator(g_artifact)
    g = g.to(device)
    t1 = time.time()
    s2, last2 = train_stage(STAGE2, cfg, train, generator=g, seed=seed + 1)
    t2 = time.time()
    S = s2.S.eval()
    pred = torch.cat([predict(S, photos[i:i + 50], res, 0.5) for i in range(0, len(photos), 50)])
    gtb = gt.bool()
    score = {k: v.mean().item() for k, v in segmentation_scores(pred, gtb).items()}
    row = {"variant": name, "overrides": overrides, "seed": seed, "device": str(device),
           "iou_strict": score["iou_strict"], "dice_strict": score["dice_strict"], "iou_paper": score["iou_paper"],
           "all_foreground": segmentation_scores(all_foreground_baseline(gtb), gtb)["iou_strict"].mean().item(),
           "centred_box": segmentation_scores(centred_box_baseline(gtb, gtb.float().mean().item()), gtb)["iou_strict"].mean().item(),
           "pred_area": pred.float().mean().item(), "stage1_s": round(t1 - t0, 1), "stage2_s": round(t2 - t1, 1),
           "mask_mean": health.get("mask/mean"), "swapped": health.get("swapped_fg_bg"),
           "D_z_real": last1.get("D_z/real_score"), "D_z_fake": last1.get("D_z/fake_score"),
           "S_consistency": last2.get("loss/S_consistency")}
    if images_dir:
        save_pictures(Path(images_dir), name, g, cfg, photos, gtb, pred, S)
    print(json.dumps(row), flush=True)
    return row


@torch.no_grad()
def save_pictures(folder: Path, name: str, g, cfg, photos, gt, pred, S) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    pick = torch.arange(0, len(photos), max(1, len(photos) // 8))[:8]
    rows = image_grid([photos[pick].cpu(), gt[pick].float().cpu(), pred[pick].float().cpu()])
    Image.fromarray(grid_to_uint8(rows)).save(folder / f"sweep_{name}_eval.png")
    codes = sample_codes(8, cfg.model, device=photos.device, generator=torch.Generator(photos.device).manual_seed(5))[:3]
    out = g(*codes)
    samples = image_grid([t.cpu() for t in (out.image, out.fg, out.bg, out.mask, S(out.image))])
    Image.fromarray(grid_to_uint8(samples)).save(folder / f"sweep_{name}_samples.png")


def grid_variants(specs: list[str]) -> dict[str, list[str]]:
    """key=a,b key2=c,d -> every combination, named by its values."""
    axes = [[f"{s.split('=', 1)[0]}={v}" for v in s.split("=", 1)[1].split(",")] for s in specs]
    return {"+".join(o.split("=", 1)[1] or "off" for o in combo): list(combo) for combo in itertools.product(*axes)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    q = sub.add_parser("prepare")
    q.add_argument("--source", default=str(ROOT.parent / "shared" / "data" / "weizmann_horse"))
    q.add_argument("--size", type=int, default=128)
    q.add_argument("--out", default=str(DEFAULT_DATA))
    r = sub.add_parser("run")
    r.add_argument("--variant", nargs="+", action="append", default=[], metavar=("NAME", "KEY=VALUE"))
    r.add_argument("--grid", nargs="+", metavar="KEY=V1,V2", help="every combination of these values")
    r.add_argument("--config", default="photos")  # horses_sweep.jsonl's rows ran the former `horses` preset
    r.add_argument("--data", default=str(DEFAULT_DATA))
    r.add_argument("--seeds", type=int, nargs="+", default=[0])
    r.add_argument("--parallel", type=int, default=1, help="variants trained at once (processes)")
    r.add_argument("--threads", type=int, default=0, help="torch threads per process (0: torch's default)")
    r.add_argument("--images", help="folder for each variant's PNG grids")
    r.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "horses_sweep.jsonl"))
    a = p.parse_args()
    if a.command == "prepare":
        prepare(Path(a.source), a.size, Path(a.out))
        return 0
    if a.threads:
        torch.set_num_threads(a.threads)
    variants = {v[0]: v[1:] for v in a.variant} | (grid_variants(a.grid) if a.grid else {})
    jobs = [(name, ov, a.data, a.config, seed, a.images) for name, ov in variants.items() for seed in a.seeds]
    if a.parallel > 1:
        with mp.get_context("spawn").Pool(a.parallel) as pool:
            rows = pool.starmap(run_variant, jobs)
    else:
        rows = [run_variant(*j) for j in jobs]
    with open(a.out, "a") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    print(f"{'variant':<28}{'seed':>5}{'IoU':>7}{'Dice':>7}{'IoU*':>7}{'area':>6}{'s1 s':>7}{'s2 s':>7}")
    for r_ in rows:
        print(f"{r_['variant']:<28}{r_['seed']:>5}{r_['iou_strict']:>7.3f}{r_['dice_strict']:>7.3f}{r_['iou_paper']:>7.3f}"
              f"{r_['pred_area']:>6.2f}{r_['stage1_s']:>7.0f}{r_['stage2_s']:>7.0f}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
