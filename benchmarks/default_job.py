"""Benchmark of the main job: wall time, stage-1 throughput and segmentation quality over seeds.

Runs `python jobs/train.py` exactly as a user does (local Ray, default config unless overridden),
once per seed, each as its own run, and prints one table from the runs' summary.json files.

    python benchmarks/default_job.py --seeds 0 1 2
    python benchmarks/default_job.py --seeds 0 -- stage1.steps=1000   # extra job arguments
    python benchmarks/default_job.py --seeds 0 --prefix st --generator benchmarks/out/runs/bench-default-seed0/stage1/generator.pt \
        -- stage2.self_train.weight=0 stage2.steps=400                # stage 2 only (jobs/segment.py), one generator

With --generator, each seed trains stage 2 only on that stage-1 artifact: stage-2 settings are
compared on one and the same generator, as stage-1 runs differ a lot from seed to seed.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class JobFailed(Exception):
    """A job exited with an error (`code`, the job's own exit code) or left no evaluation."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def run_job(seed: int, name: str, storage: str, job_args: list[str], generator: str | None = None) -> dict:
    """Runs one seed as its own run of jobs/train.py (or jobs/segment.py on `generator`) and reads
    its summary.json back into one table row."""
    job = ["segment.py", f"--generator={generator}"] if generator else ["train.py"]
    cmd = [sys.executable, str(ROOT / "jobs" / job[0]), *job[1:], f"--storage={storage}", f"--name={name}",
           f"run.seed={seed}", *job_args]
    print("$", " ".join(cmd), flush=True)
    t0 = time.time()
    rc = subprocess.call(cmd, cwd=ROOT)
    wall = time.time() - t0
    if rc:
        raise JobFailed(rc, f"seed {seed}: job failed with exit code {rc}")
    summary = json.loads((Path(storage) / name / "summary.json").read_text())
    ev = summary.get("eval")
    if not ev:
        raise JobFailed(1, f"seed {seed}: {name}/summary.json has no evaluation (data.eval off?)")
    stage1 = summary.get("stage1", {})
    return {"seed": seed, "wall_s": wall, "stage1_img_s": stage1.get("perf/images_per_s"),
            "stage1_s": stage1.get("perf/seconds"), "stage2_s": summary.get("stage2", {}).get("perf/seconds"),
            "iou": ev["segmenter"]["iou_strict"], "dice": ev["segmenter"]["dice_strict"],
            "iou_paper": ev["segmenter"]["iou_paper"], "box": ev["centred_box"]["iou_strict"],
            "all_fg": ev["all_foreground"]["iou_strict"], "swapped": stage1.get("swapped_fg_bg"),
            "empty": stage1.get("mask/empty_fraction"), "restarts": len(summary.get("stage1_collapsed", []))}


def print_table(rows: list[dict]) -> None:
    print(f"\n{'seed':>4} {'wall s':>7} {'s1 img/s':>9} {'s1 s':>6} {'s2 s':>6} {'IoU':>6} {'Dice':>6} "
          f"{'IoU*':>6} {'box':>6} {'all-fg':>7} {'swap':>5} {'empty':>6} {'restarts':>8}")
    for r in rows:
        print(f"{r['seed']:>4} {r['wall_s']:>7.0f} {r['stage1_img_s'] or 0:>9.1f} {r['stage1_s'] or 0:>6.0f} "
              f"{r['stage2_s'] or 0:>6.0f} {r['iou']:>6.3f} {r['dice']:>6.3f} {r['iou_paper']:>6.3f} "
              f"{r['box']:>6.3f} {r['all_fg']:>7.3f} {str(r['swapped']):>5} {r['empty'] or 0:>6.3f} "
              f"{r.get('restarts', 0):>8}")
    ious = [r["iou"] for r in rows]
    print(f"strict IoU: mean {statistics.mean(ious):.3f}, min {min(ious):.3f}, max {max(ious):.3f}; "
          f"wall time max {max(r['wall_s'] for r in rows):.0f}s  (IoU* = paper convention)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--storage", default=str(ROOT / "benchmarks" / "out" / "runs"))
    p.add_argument("--prefix", default="bench-default")
    p.add_argument("--generator", help="train stage 2 only, on this stage-1 generator.pt (jobs/segment.py)")
    p.add_argument("job_args", nargs="*", help="extra arguments for jobs/train.py (after --)")
    a = p.parse_args()
    rows = []
    for seed in a.seeds:
        try:
            rows.append(run_job(seed, f"{a.prefix}-seed{seed}", a.storage, a.job_args, a.generator))
        except JobFailed as e:
            print(f"error: {e}", file=sys.stderr)
            return e.code
    print_table(rows)
    out = Path(a.storage).parent / f"{a.prefix}.json"
    out.write_text(json.dumps(rows, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
