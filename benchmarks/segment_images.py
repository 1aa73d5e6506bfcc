"""Throughput of jobs/segment_images.py in one process (--workers 0), on real photos.

1. Copies --count photos (default: the 200 Weizmann horse photos, 195-560 px wide; cycled if
   --count is larger) to a scratch folder and segments them with the segmenter artifact (default:
   the horses benchmark's benchmarks/out/horses/runs/horses-base/stage2/segmenter.pt), timing the
   job as a user runs it: photos/s over the segmentation, and wall time including listing and
   loading. Where the photos come with masks (<photos>/../masks/<name>.png), the masks written at
   each photo's own size are scored against them (strict and paper-convention IoU), which should
   match the horses benchmark's score at 128 px.
2. With --camera N (default 50), also N of the photos enlarged to camera size (--camera-side px on
   the long side, JPEG quality 90): decoding, upsampling and mask encoding dominate there.
Writes benchmarks/results/segment_images.json.

    python benchmarks/segment_images.py
    python benchmarks/segment_images.py --segmenter runs/default/stage2/segmenter.pt --count 1000 --camera 0
    python benchmarks/segment_images.py --colour-refine --out benchmarks/results/segment_images_colour.json

--flip and --colour-refine time the job with those options (as jobs/segment_images.py takes them).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cluster.photo_segmenter import Settings
from cluster.segment_images import segment_images
from comgan.metrics import segmentation_scores

PHOTOS = ROOT.parent / "shared" / "data" / "weizmann_horse" / "images"
SEGMENTER = ROOT / "benchmarks" / "out" / "horses" / "runs" / "horses-base" / "stage2" / "segmenter.pt"
RESULTS = ROOT / "benchmarks" / "results"


def copy_photos(src: Path, dest: Path, count: int, long_side: int = 0) -> list[str]:
    """`count` photos from `src` into `dest` (cycled, renamed when repeated), optionally enlarged."""
    files = sorted(p for p in src.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
    dest.mkdir(parents=True)
    names = []
    for i in range(count):
        f = files[i % len(files)]
        name = f.name if i < len(files) else f"{f.stem}_{i // len(files)}{f.suffix}"
        if long_side:
            img = Image.open(f).convert("RGB")
            s = long_side / max(img.size)
            img = img.resize((round(img.width * s), round(img.height * s)), Image.BICUBIC)
            name = Path(name).stem + ".jpg"
            img.save(dest / name, format="JPEG", quality=90)
        else:
            shutil.copyfile(f, dest / name)
        names.append(name)
    return names


def score(report: dict, out: Path, masks: Path) -> dict | None:
    """Mean IoU of the written masks against ground truth at each photo's own size."""
    scores = []
    for entry in report["segmented"]:
        original = entry["photo"].split("_")[0].rsplit(".", 1)[0]
        gt_file = masks / f"{original}.png"
        if not gt_file.exists():
            return None
        pred = np.asarray(Image.open(out / entry["mask"])) > 127
        gt = Image.open(gt_file).convert("L")
        if gt.size != pred.shape[::-1]:
            gt = gt.resize(pred.shape[::-1], Image.BILINEAR)
        gt = np.asarray(gt) > 127
        s = segmentation_scores(torch.from_numpy(pred)[None, None], torch.from_numpy(gt)[None, None])
        scores.append({k: v.item() for k, v in s.items()})
    return {k: round(float(np.mean([s[k] for s in scores])), 4) for k in scores[0]} if scores else None


def run(name: str, photos: Path, segmenter: str, out: Path, settings: Settings) -> dict:
    started = time.monotonic()
    report = segment_images(str(photos), segmenter, str(out), settings, progress=False)
    wall = time.monotonic() - started
    sizes = np.array([e["size"] for e in report["segmented"]])
    row = {"name": name, "photos": report["num_photos"], "segmented": report["num_segmented"],
           "median_size": [int(v) for v in np.median(sizes, axis=0)],
           "photos_per_second": report["photos_per_second"], "seconds": report["seconds"],
           "wall_seconds": round(wall, 2)}
    print(f"{name}: {row['segmented']} photos (median {row['median_size'][0]}x{row['median_size'][1]} px) "
          f"in {row['seconds']:.1f}s: {row['photos_per_second']:.1f} photos/s ({wall:.1f}s with listing and loading)")
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", default=str(PHOTOS), help="folder of photos (default: %(default)s)")
    p.add_argument("--segmenter", default=str(SEGMENTER), help="segmenter artifact (default: %(default)s)")
    p.add_argument("--count", type=int, default=200, help="photos at their own size (default: %(default)s)")
    p.add_argument("--camera", type=int, default=50, help="photos enlarged to camera size; 0: none (default: %(default)s)")
    p.add_argument("--camera-side", type=int, default=4000, help="their long side in px (default: %(default)s)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--io-threads", type=int, default=4)
    p.add_argument("--flip", action="store_true", help="average each mask with its mirror image's")
    p.add_argument("--colour-refine", action="store_true", help="refine each mask by its photo's colours")
    p.add_argument("--out", default=str(RESULTS / "segment_images.json"))
    a = p.parse_args(argv)
    if not Path(a.segmenter).exists() and "://" not in a.segmenter:
        raise SystemExit(f"no segmenter at {a.segmenter}: run benchmarks/horses.py first or pass --segmenter")
    settings = Settings(batch=a.batch, io_threads=a.io_threads, device="cpu", flip=a.flip, colour=a.colour_refine)
    photos = Path(a.photos)
    results = {"segmenter": a.segmenter, "settings": {**asdict(settings), "workers": 0},
               "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "runs": []}
    with tempfile.TemporaryDirectory(prefix="segment-bench-") as tmp:
        tmp = Path(tmp)
        copy_photos(photos, tmp / "photos", a.count)
        row = run("own size", tmp / "photos", a.segmenter, tmp / "masks", settings)
        report = json.loads((tmp / "masks" / "segment_report.json").read_text())
        row["iou_vs_ground_truth"] = score(report, tmp / "masks", photos.parent / "masks")
        if row["iou_vs_ground_truth"]:
            print(f"  masks at each photo's size against ground truth: {row['iou_vs_ground_truth']}")
        results["runs"].append(row)
        if a.camera:
            t = time.monotonic()
            copy_photos(photos, tmp / "camera", a.camera, long_side=a.camera_side)
            print(f"(enlarged {a.camera} photos to {a.camera_side} px in {time.monotonic() - t:.1f}s)")
            results["runs"].append(run(f"camera size ({a.camera_side} px long side)", tmp / "camera", a.segmenter,
                                       tmp / "camera-masks", settings))
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
