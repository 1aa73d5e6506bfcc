"""Quality of the default recipe without Ray: same comgan steps, synthetic images held in memory.

A fast loop for tuning the model and training recipe (the full job adds Ray, shards and I/O on
top of exactly these steps). Prints strict IoU of the segmenter next to the baselines.

    python benchmarks/inprocess_quality.py --seeds 0 1 2 stage1.steps=1500
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cluster.config import load_config  # noqa: E402
from comgan.export import export_generator  # noqa: E402
from comgan.inference import INFERENCE_BATCH  # noqa: E402
from comgan.metrics import all_foreground_baseline, centred_box_baseline, segmentation_scores  # noqa: E402
from comgan.networks import sample_codes  # noqa: E402
from comgan.training import Stage1State, Stage1Step, Stage2State, Stage2Step  # noqa: E402
from data_shards.synthetic import synthetic_samples  # noqa: E402


def load_set(count, res, styles, seed):
    s = list(synthetic_samples(count, res, styles, seed))
    img = torch.tensor(np.stack([x["image"] for x in s])).permute(0, 3, 1, 2).float() / 127.5 - 1
    mask = torch.tensor(np.stack([x["mask"] for x in s]))[:, None] > 127
    return img, mask


def run(cfg, seed, train, test, out_dir=None):
    torch.manual_seed(seed)
    t0 = time.time()
    s1 = Stage1State.create(cfg)
    step = Stage1Step(s1, cfg)
    bs = cfg.stage1.batch_size
    for i in range(cfg.stage1.steps):
        idx = torch.randint(len(train), (bs,))
        x = train[idx]
        flip = torch.rand(bs) < 0.5
        x[flip] = x[flip].flip(-1)
        st = step(x)
        if (i + 1) % 250 == 0:
            print(f"  seed {seed} s1 {i + 1}: " + " ".join(f"{k.split('/')[-1]}={v.item():.3f}" for k, v in st.items()), flush=True)
    t1 = time.time()
    g_export, done, health = export_generator(s1.G_ema, cfg, chunk=INFERENCE_BATCH)
    s2 = Stage2State.create(cfg)
    step2 = Stage2Step(s2, cfg, generator=g_export)
    for i in range(cfg.stage2.steps):
        idx = torch.randint(len(train), (cfg.stage2.batch_size,))
        step2(train[idx])
    t2 = time.time()
    s2.S.eval()
    with torch.no_grad():
        pred = torch.cat([s2.S(test[0][i:i + 100]) for i in range(0, len(test[0]), 100)]) > 0.5
    gt = test[1]
    res = {"segmenter": segmentation_scores(pred, gt)["iou_strict"].mean().item(),
           "paper": segmentation_scores(pred, gt)["iou_paper"].mean().item(),
           "all_fg": segmentation_scores(all_foreground_baseline(gt), gt)["iou_strict"].mean().item(),
           "box": segmentation_scores(centred_box_baseline(gt, gt.float().mean().item()), gt)["iou_strict"].mean().item()}
    if out_dir:
        from PIL import Image
        from comgan.visualize import grid_to_uint8, image_grid
        os.makedirs(out_dir, exist_ok=True)
        with torch.no_grad():
            o = g_export(*sample_codes(12, cfg.model)[:3])
            g1 = image_grid([o.image, o.fg, o.bg, o.mask, o.global_image, s2.S(o.image)])
            g2 = image_grid([test[0][:12], test[1][:12].float(), pred[:12].float()])
        for name, g in (("generated", g1), ("real", g2)):
            Image.fromarray(grid_to_uint8(g)).resize((g.shape[2] * 3, g.shape[1] * 3), Image.NEAREST).save(
                f"{out_dir}/seed{seed}_{name}.png")
        torch.save({"G_ema": g_export.state_dict(), "S": s2.S.state_dict()}, f"{out_dir}/seed{seed}.pt")
    print(f"seed {seed}: IoU strict {res['segmenter']:.3f} (all-fg {res['all_fg']:.3f}, box {res['box']:.3f}) "
          f"paper {res['paper']:.3f} stage1 {t1 - t0:.0f}s stage2 {t2 - t1:.0f}s mask {health} {done}", flush=True)
    return res


def main():
    p = argparse.ArgumentParser()
    p.add_argument("overrides", nargs="*")
    p.add_argument("--config", default="default")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", help="folder for sample grids and weights")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    cfg = load_config(a.config, a.overrides)
    train = load_set(cfg.data.synthetic_train_size, cfg.model.resolution, cfg.data.synthetic_styles, 1000)[0]
    test = load_set(500, cfg.model.resolution, cfg.data.synthetic_styles, 2000)
    ious = [run(cfg, s, train, test, a.out)["segmenter"] for s in a.seeds]
    print(f"IoU strict over seeds {a.seeds}: {np.round(ious, 3).tolist()} mean {np.mean(ious):.3f}")


if __name__ == "__main__":
    main()
