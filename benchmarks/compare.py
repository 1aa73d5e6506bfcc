"""The comparison table: DS-ComGAN, ReDO, GrabCut and the trivial baselines on the same data, in the
same geometry, strict and paper convention, with wall time on the same machine.

Collections and how each method is trained on them, exactly as a user runs it:
  synthetic   the default job's scenes (32 px; scored on its 500 held-out labelled scenes):
                ds-comgan  python jobs/train.py run.seed=S
                redo       python jobs/train.py --config redo run.seed=S
              GrabCut on the same scenes: jobs/evaluate.py --grabcut (at their 32 px, where GrabCut
              has little to work with: the photos are its fair test).
  horses, flowers   benchmarks/photos.py's runs (its split, shards and 128 px scoring of the
              held-out quarter): ds-comgan is the photos preset, redo the photos preset with
              REDO_ON_PHOTOS (ReDO's settings, its steps sized to the preset's wall time).
Both methods get the same data, the same evaluation (the run's own, on held-out images) and about
the same wall time per collection. The trivial baselines (everything foreground, a centred box of
the mean object area) and GrabCut come from the same evaluation reports.

Rows go to --out (default benchmarks/results/compare.json), one per method, collection, seed and
numerics; a row already there is skipped, so rerunning the same command continues. The photo runs'
folders are photos.py's: a run photos.py already finished is reused (only scored again). The
baselines' rows come with DS-ComGAN's (the same images; they do not depend on the method).

    python benchmarks/compare.py                                   # all collections, seed 0
    python benchmarks/compare.py --collections synthetic --seeds 0 1 2
    python benchmarks/compare.py --collections horses flowers --numerics avx2
    python benchmarks/compare.py --table
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import photos  # noqa: E402  (the photo collections' split, shards and runs)
from cluster.cli import OneLineParser  # noqa: E402
from robustness import cpu_model, draw_env, load_rows, save_rows  # noqa: E402  (the same results-file shape)

OUT = ROOT / "benchmarks" / "out" / "compare"
RESULTS = ROOT / "benchmarks" / "results" / "compare.json"
COLLECTIONS = ("synthetic", "horses", "flowers")
METHODS = ("ds-comgan", "redo")
BASELINES = ("grabcut", "centred_box", "all_foreground")
# ReDO on the photos: the photos preset's data and scoring, ReDO's own settings (cluster/configs/
# redo.yaml), and steps that take about the preset's wall time on a 2-core CPU (an estimate, 1.4 s
# a step at 64 px and batch 25, against the preset's 40-47 minutes; the rows record the real time).
REDO_ON_PHOTOS = ["model.variant=redo", "model.z_dim=32", "stage2.lr=1e-4", "stage2.batch_size=25", "stage2.steps=1900"]
SYNTHETIC_CONFIG = {"ds-comgan": [], "redo": ["--config", "redo"]}


def row_key(r: dict) -> tuple:
    return r["method"], r["collection"], r["seed"], r["numerics"]


def scores(report: dict, name: str) -> dict | None:
    part = report.get(name)
    return None if part is None else {"iou": part["iou_strict"], "iou_paper": part["iou_paper"]}


def make_rows(method: str, collection: str, seed: int, numerics: str, run: Path, wall_s: float,
              report: dict) -> list[dict]:
    """The method's row and the baselines' rows of one evaluation report."""
    common = {"collection": collection, "seed": seed, "numerics": numerics, "run": str(run.relative_to(ROOT)),
              "images": report["num_images"], "px": report.get("score_resolution") or report.get("model_resolution"),
              "cpu": cpu_model(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    rows = [{"method": method, **common, **scores(report, "segmenter"), "wall_s": round(wall_s)}]
    if method == "ds-comgan":
        rows += [{"method": name, **common, **scores(report, name), "wall_s": None}
                 for name in BASELINES if scores(report, name)]
    return rows


def run_synthetic(method: str, seed: int, numerics: str) -> list[dict] | None:
    name = f"compare-{method}-synthetic-seed{seed}" + ("" if numerics == "native" else f"-{numerics}")
    run = OUT / "runs" / name
    cmd = [sys.executable, str(ROOT / "jobs" / "train.py"), *SYNTHETIC_CONFIG[method], f"run.seed={seed}",
           "--storage", str(OUT / "runs"), "--name", name]
    print("$", " ".join(cmd), flush=True)
    t0 = time.time()
    if subprocess.call(cmd, cwd=ROOT, env=draw_env(numerics)):
        print(f"[compare] {name}: training failed; no row written", flush=True)
        return None
    wall = time.time() - t0
    summary = json.loads((run / "summary.json").read_text())
    report = json.loads((run / "eval.json").read_text())
    if method == "ds-comgan":  # GrabCut once per seed, on the same scenes (the segmenter's scores come along)
        grabcut = run / "eval_grabcut.json"
        eval_url = yaml.safe_load((run / "config.yaml").read_text())["data"]["eval"]
        cmd = [sys.executable, str(ROOT / "jobs" / "evaluate.py"), "--segmenter", str(run / "stage2" / "segmenter.pt"),
               "--data", eval_url, "--grabcut", "--out", str(grabcut), "--overwrite"]
        print("$", " ".join(cmd), flush=True)
        if subprocess.call(cmd, cwd=ROOT, env=draw_env(numerics)) == 0:
            report["grabcut"] = json.loads(grabcut.read_text())["grabcut"]
    return make_rows(method, "synthetic", seed, numerics, run, summary.get("wall_seconds", wall), report)


def run_photos(method: str, collection: str, seed: int, numerics: str) -> list[dict] | None:
    urls = photos.collection_shards(collection, photos.COLLECTIONS[collection])
    variant, overrides = (photos.PRESET, []) if method == "ds-comgan" else ("redo", REDO_ON_PHOTOS)
    storage = photos.OUT / "runs"
    row = photos.run_one(variant, overrides, collection, seed, numerics, urls, storage)
    if row is None:
        return None
    run = storage / row["run"]
    summary = json.loads((run / "summary.json").read_text())
    return make_rows(method, collection, seed, numerics, run, summary["wall_seconds"],
                     json.loads((run / "eval.json").read_text()))


# ---------------------------------------------------------------------------------------------
# The table


def median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def table(rows: list[dict]) -> str:
    collections = [c for c in COLLECTIONS if any(r["collection"] == c for r in rows)]
    methods = [m for m in (*METHODS, *BASELINES) if any(r["method"] == m for r in rows)]
    head = f"{'method':<16}" + "".join(f"{c:^30}" for c in collections)
    sub = f"{'':<16}" + "".join(f"{'IoU':>9}{'IoU*':>9}{'wall min':>10}  " for _ in collections)
    lines = ["Median over seeds; IoU strict, IoU* paper convention (the better of the mask and its complement)",
             head, sub]
    for m in methods:
        cells = ""
        for c in collections:
            rs = [r for r in rows if r["method"] == m and r["collection"] == c]
            iou, paper, wall = (median([r.get(k) for r in rs]) for k in ("iou", "iou_paper", "wall_s"))
            for value in (iou, paper):
                cells += ("-" if value is None else f"{value:.3f}").rjust(9)
            cells += ("-" if wall is None else f"{wall / 60:.0f}").rjust(10) + "  "
        lines.append(f"{m:<16}{cells}")
    for c in collections:
        rs = [r for r in rows if r["collection"] == c and r["method"] in METHODS]
        seeds = sorted({r["seed"] for r in rs})
        sets = sorted({f"{r['images']} images at {r['px']} px" for r in rs})
        lines.append(f"{c}: seeds {','.join(map(str, seeds))}; scored on {'; '.join(sets)}; "
                     f"numerics {','.join(sorted({r['numerics'] for r in rs}))}")
    lines.append("published on Oxford-102 Flowers (paper convention): GrabCut 0.692, ReDO 0.764, DS-ComGAN 0.769")
    lines.append("CPU: " + "; ".join(sorted({r["cpu"] for r in rows})))
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = OneLineParser(prog="benchmarks/compare.py", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--collections", nargs="+", choices=COLLECTIONS, default=list(COLLECTIONS))
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="run.seed values (default: 0)")
    p.add_argument("--numerics", choices=photos.NUMERICS, default="native",
                   help="native kernels, or avx2: what an AVX2-only CPU computes (benchmarks/robustness.py)")
    p.add_argument("--out", default=str(RESULTS), help="results JSON, appended to (default: %(default)s)")
    p.add_argument("--table", action="store_true", help="print the table of --out and stop (no training)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    out = Path(a.out)
    rows = load_rows(out)
    if a.table:
        print(table(rows) if rows else f"no results at {out} yet")
        return 0
    failed = 0
    for collection in a.collections:
        for method in a.methods:
            for seed in a.seeds:
                if (method, collection, seed, a.numerics) in {row_key(r) for r in rows}:
                    print(f"[compare] {method} on {collection}, seed {seed} ({a.numerics}): done, skipped", flush=True)
                    continue
                new = (run_synthetic(method, seed, a.numerics) if collection == "synthetic"
                       else run_photos(method, collection, seed, a.numerics))
                if new is None:
                    failed += 1
                    continue
                rows = load_rows(out) + new
                save_rows(out, rows)
    print(table(rows) if rows else "no rows")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
