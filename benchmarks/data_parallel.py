"""Data parallelism on CPU: 1 worker against 2 workers at the same global batch.

Runs stage 1 of the default config through `jobs/train.py --stage1-only` twice, with 1 and with 2
Ray Train workers (the global batch stays 32: 32 per step on one worker, 16 + 16 on two), then
prints the images/s of each and overlays their loss curves in one PNG. The curves should agree:
the two runs see different random codes and batches, so they differ by noise, not by trend.

    python benchmarks/data_parallel.py                     # 300 steps each, about 8 minutes on 2 cores
    python benchmarks/data_parallel.py --steps 100 --workers 1 2 4

Needs matplotlib (pip install -e ".[bench]").
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tb_scalars import curve, read_scalars

ROOT = Path(__file__).resolve().parents[1]
TAGS = ("loss/D_z", "loss/G_adv", "loss/D_f_info", "loss/binary_entropy", "mask/mean", "loss/G_total")


def run(workers: int, steps: int, storage: Path, prefix: str) -> dict:
    name = f"{prefix}-{workers}w"
    cmd = [sys.executable, str(ROOT / "jobs" / "train.py"), "--stage1-only", f"--workers={workers}",
           f"--storage={storage}", f"--name={name}", f"stage1.steps={steps}", "run.log_every=10",
           f"run.checkpoint_every={steps}"]
    print("$", " ".join(cmd), flush=True)
    t0 = time.time()
    subprocess.run(cmd, cwd=ROOT, check=True)
    summary = json.loads((storage / name / "summary.json").read_text())["stage1"]
    rows = read_scalars(storage / name / "tensorboard" / "stage1")
    return {"workers": workers, "wall_s": time.time() - t0, "train_s": summary["perf/seconds"],
            "images_per_s": steps * 32 / summary["perf/seconds"],
            "curves": {tag: curve(rows, tag) for tag in TAGS}}


def tail_mean(values: list[float], fraction: float = 1 / 3) -> float:
    return statistics.mean(values[-max(1, int(len(values) * fraction)):])


def plot(results: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, tag in zip(axes.flat, TAGS):
        for r in results:
            steps, values = r["curves"][tag]
            ax.plot(steps, values, label=f"{r['workers']} worker(s): {r['images_per_s']:.0f} img/s")
        ax.set_title(tag)
        ax.set_xlabel("step (global batch 32)")
        ax.grid(alpha=0.3)
    axes.flat[0].legend()
    fig.suptitle("Stage 1, default config: 1 vs 2 data-parallel CPU workers at the same global batch")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--storage", type=Path, default=ROOT / "benchmarks" / "out" / "runs")
    p.add_argument("--prefix", default=f"dp-{time.strftime('%Y%m%d-%H%M%S')}")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    results = [run(w, a.steps, a.storage, a.prefix) for w in a.workers]
    plot(results, a.out / "data_parallel_loss_curves.png")
    print(f"\n{'workers':>7} {'img/s':>7} {'train s':>8} {'wall s':>7}  " + "  ".join(f"{t:>18}" for t in TAGS[:5]))
    for r in results:
        means = "  ".join(f"{tail_mean(r['curves'][t][1]):>18.3f}" for t in TAGS[:5])
        print(f"{r['workers']:>7} {r['images_per_s']:>7.1f} {r['train_s']:>8.0f} {r['wall_s']:>7.0f}  {means}")
    print("(loss columns: mean over the last third of the steps)")
    report = [{k: v for k, v in r.items() if k != "curves"} | {"tail_means": {t: tail_mean(r["curves"][t][1])
                                                                               for t in TAGS}} for r in results]
    (a.out / "data_parallel.json").write_text(json.dumps({"steps": a.steps, "results": report}, indent=2) + "\n")
    print(f"wrote {a.out / 'data_parallel_loss_curves.png'} and {a.out / 'data_parallel.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
