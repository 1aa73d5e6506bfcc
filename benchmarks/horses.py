"""Real-photo benchmark: DS-ComGAN on the Weizmann horses against GrabCut and trivial baselines.

The `photos` preset's own benchmark, on the horses and the flowers with a held-out quarter, is
benchmarks/photos.py. This one keeps the tools behind benchmarks/results/horses.json: variants on
all 200 horses, stage 2 alone on a fixed generator (--generator), colour-refined scores.
The rows of horses.json ran the former `horses` preset (cluster/configs/horses.yaml, replaced by
`photos`); as it last stood, it is the `photos` preset with stage1.steps=2000 stage2.steps=1200 stage2.self_train.start=600
run.checkpoint_every=500 run.image_every=500 (and data.* set by this script) is that preset.

1. Converts an images/ + masks/ folder (default: ../shared/data/weizmann_horse) to shards: each
   photo and its mask squashed to a square of --size px (the geometry every method is scored in).
   Training shards hold the images only; masks are for evaluation only. By default every photo is
   trained on (without its mask) and scored, as unsupervised segmentation is usually evaluated;
   --holdout N keeps N photos out of training and scores those only.
2. Trains each variant with `python jobs/train.py --config photos <overrides>`, exactly as a user
   would (local Ray on a laptop; add --storage s3://... and run.use_gpu=true on a cluster: the same
   script scales to the paper configuration with --config paper-like YAML and overrides).
3. Prints one table: per variant, strict IoU / Dice of the segmenter scored at --size px (its
   masks upsampled; "+colour": also refined by each photo's colours, jobs/evaluate.py
   --colour-refine), next to GrabCut, all-foreground and the centred box on the same images, and
   wall time; writes it to benchmarks/results/horses.json and copies each run's eval grid.

    python benchmarks/horses.py                                   # the default variants
    python benchmarks/horses.py --variants base no-augment        # some of them
    python benchmarks/horses.py --variant mine stage1.beta=2 stage1.steps=4000
    python benchmarks/horses.py --generator benchmarks/out/horses/runs/horses-base/stage1/generator.pt \
        --variant s2-adv01 stage2.adv_weight=0.1 data.eval_grabcut=false   # stage 2 only, on a fixed generator

With --generator, each variant trains stage 2 only (jobs/segment.py) on that stage-1 artifact:
stage-1 runs differ a lot from seed to seed on 200 photos (benchmarks/horses_sweep.py), so stage-2
settings are compared on one and the same generator. --collect NAME... adds rows for runs already
in --storage (named horses-NAME) without training again.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from photos import write_photo_shards  # noqa: E402  (photos -> squashed shards, shared with benchmarks/photos.py)

OUT = ROOT / "benchmarks" / "out" / "horses"
RESULTS = ROOT / "benchmarks" / "results"

# name -> overrides of the preset (--config); each is one run of jobs/train.py. Rows of horses.json
# ran the former `horses` preset (see above), those from before 2026-12-02 an older version of it
# (no border prior, stage 2 without self-training at adv_weight 1 for 1000 steps);
# benchmarks/results/README.md gives each row's command.
VARIANTS = {
    "base": [],
    "bf16": ["run.mixed_precision=bf16"],  # on a CPU with avx512_bf16: the recipe within 60 minutes here
    "no-border": ["stage1.mask_border_weight=0"],
    "no-self-train": ["stage2.self_train.weight=0"],
    "no-augment": ["stage1.augment="],
    "beta0": ["stage1.beta=0"],
    "beta2": ["stage1.beta=2"],
    "N8": ["model.num_categories=8"],
    "no-orient": ["stage1.orient_mask=false"],
    "area50": ["stage1.mask_area_max=0.5"],  # a prior that the object is the smaller part
    "32px": ["model.resolution=32", "model.ngf=16", "model.subnet_width=16", "model.seg_depth=3"],
}


def make_shards(source: Path, size: int, holdout: int, seed: int = 0) -> dict:
    """train (images only) and eval (images + masks) shard sets under OUT/shards; written once."""
    images = sorted((source / "images").glob("*.jpg"))
    if not images:
        raise SystemExit(f"error: no images in {source / 'images'}")
    order = np.random.default_rng(seed).permutation(len(images))
    held = {images[i].stem for i in order[:holdout]}
    sets = {"train": [p for p in images if p.stem not in held], "eval": [p for p in images if p.stem in held] or images}
    urls = {}
    for name, paths in sets.items():
        url = OUT / "shards" / f"{name}-{size}px-holdout{holdout}"
        if not (url / "manifest.json").exists():
            write_photo_shards(paths, url, size, masks=source / "masks" if name != "train" else None)
        urls[name] = str(url)
    return urls


def run_variant(name: str, overrides: list[str], urls: dict, config: str, storage: Path, extra: list[str],
                generator: str | None = None) -> dict:
    run = f"horses-{name}"
    job = ["segment.py", "--generator", generator] if generator else ["train.py"]
    cmd = [sys.executable, str(ROOT / "jobs" / job[0]), *job[1:], "--config", config, "--storage", str(storage),
           "--name", run, f"data.train={urls['train']}", f"data.eval={urls['eval']}", *overrides, *extra]
    print("$", " ".join(cmd), flush=True)
    t0 = time.time()
    rc = subprocess.call(cmd, cwd=ROOT)
    if rc:
        return {"variant": name, "failed": rc}
    return collect(name, overrides, storage, urls["eval"], round(time.time() - t0), generator)


def collect(name: str, overrides: list[str], storage: Path, eval_url: str, wall: float | None = None,
            generator: str | None = None) -> dict:
    """The table row of a finished run folder (horses-NAME under `storage`)."""
    run = f"horses-{name}"
    summary = json.loads((storage / run / "summary.json").read_text())
    generator = generator or summary.get("generator")
    if wall is None:
        wall = summary["eval"].get("wall_seconds", 0)
    grid = storage / run / "eval_grid.png"
    if grid.exists():
        shutil.copy(grid, RESULTS / f"horses_{name}_eval_grid.png")
    ev, s1 = summary["eval"], summary.get("stage1", {})
    return {"variant": name, "overrides": overrides, "wall_s": round(wall), "num_images": ev["num_images"],
            "stage2_only_on": generator,
            "score_px": ev.get("score_resolution"), "segmenter": ev["segmenter"], "grabcut": ev.get("grabcut"),
            "segmenter_colour": colour_refined_scores(storage / run / "stage2" / "segmenter.pt", eval_url,
                                                      ev.get("score_resolution")),
            "all_foreground": ev["all_foreground"], "centred_box": ev["centred_box"],
            "mask_mean": s1.get("mask/mean"), "empty": s1.get("mask/empty_fraction"),
            "swapped": s1.get("swapped_fg_bg"), "D_z_real": s1.get("D_z/real_score"),
            "D_z_fake": s1.get("D_z/fake_score")}


def colour_refined_scores(segmenter: Path, eval_url: str, score_px: int | None) -> dict | None:
    """The segmenter's means with its masks refined by each photo's colours (jobs/evaluate.py
    --colour-refine) on the same images and geometry; None where the run has no segmenter."""
    if not segmenter.exists():
        return None
    from cluster.evaluate import evaluate
    results, _ = evaluate(str(segmenter), eval_url, score_resolution=score_px, colour=True)
    return results["segmenter"]


def table(rows: list[dict]) -> str:
    lines = [f"{'variant':<12}{'IoU':>7}{'Dice':>7}{'IoU*':>7}{'+colour':>8}{'GrabCut':>9}{'all-fg':>8}{'box':>7}"
             f"{'mask':>6}{'swap':>6}{'wall s':>8}"]
    for r in rows:
        if "failed" in r:
            lines.append(f"{r['variant']:<12} failed (exit {r['failed']})")
            continue
        s, g, sc = r["segmenter"], r["grabcut"] or {}, r.get("segmenter_colour") or {}
        lines.append(f"{r['variant']:<12}{s['iou_strict']:>7.3f}{s['dice_strict']:>7.3f}{s['iou_paper']:>7.3f}"
                     f"{sc.get('iou_strict', float('nan')):>8.3f}"
                     f"{g.get('iou_strict', float('nan')):>9.3f}{r['all_foreground']['iou_strict']:>8.3f}"
                     f"{r['centred_box']['iou_strict']:>7.3f}{(r['mask_mean'] or 0):>6.2f}{str(r['swapped']):>6}"
                     f"{r['wall_s']:>8}")
    lines.append("IoU/Dice strict, IoU* paper convention, +colour: strict IoU with the masks refined by each photo's "
                 "colours; all scored at the squashed photo size against its mask")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default=str(ROOT.parent / "shared" / "data" / "weizmann_horse"))
    p.add_argument("--size", type=int, default=128, help="squashed photo size, the scoring geometry")
    p.add_argument("--holdout", type=int, default=0, help="photos kept out of training (0: train and score on all)")
    p.add_argument("--config", default="photos")
    p.add_argument("--storage", default=str(OUT / "runs"))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--variant", nargs="+", metavar=("NAME", "KEY=VALUE"), help="one custom variant instead")
    p.add_argument("--out", default=str(RESULTS / "horses.json"))
    p.add_argument("--generator", help="train stage 2 only, on this stage-1 generator.pt (jobs/segment.py)")
    p.add_argument("--collect", nargs="+", metavar=("NAME", "KEY=VALUE"),
                   help="add the row of the finished run horses-NAME (with the overrides it ran with), no training")
    a, extra = p.parse_known_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    urls = make_shards(Path(a.source), a.size, a.holdout)
    chosen = {a.variant[0]: a.variant[1:]} if a.variant else {v: VARIANTS[v] for v in a.variants}
    out = Path(a.out)
    rows = json.loads(out.read_text()) if out.exists() else []
    if a.collect:
        chosen = {}
        name = a.collect[0]
        rows = [r for r in rows if r["variant"] != name] + [collect(name, a.collect[1:], Path(a.storage), urls["eval"])]
        out.write_text(json.dumps(rows, indent=2) + "\n")
        print(table(rows), flush=True)
    for name, overrides in chosen.items():
        rows = [r for r in rows if r["variant"] != name] + [run_variant(name, overrides, urls, a.config,
                                                                        Path(a.storage), extra, a.generator)]
        out.write_text(json.dumps(rows, indent=2) + "\n")  # after every run: a long sweep loses nothing
        print(table(rows), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
