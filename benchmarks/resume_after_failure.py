"""Time to resume after a worker failure, from the kill to the first new training step.

Runs stage 1 of the default config with 2 Ray Train workers (`jobs/train.py --stage1-only`) while
COMGAN_FAULT kills rank 1 with SIGKILL right after step --kill-step, once (cluster/faults.py). Ray
Train notices the dead worker, tears the group down, starts a new one, which loads the latest
checkpoint and trains on. Measured per repeat:
  - kill -> restarted: the new rank 0 has loaded the checkpoint ("resumed from step" on stdout)
  - kill -> first new step: wall time of the first TensorBoard scalar logged after the kill
    (run.log_every=1, so every step is logged)
  - steps redone: the kill step minus the checkpoint it resumed from

    python benchmarks/resume_after_failure.py --repeats 3
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tb_scalars import read_scalars

ROOT = Path(__file__).resolve().parents[1]


def run_once(name: str, a) -> dict:
    marker = a.out / f"{name}.killed"
    marker.unlink(missing_ok=True)
    env = {**os.environ, "COMGAN_FAULT": f"stage=stage1 rank=1 step={a.kill_step} at=step marker={marker}"}
    cmd = [sys.executable, str(ROOT / "jobs" / "train.py"), "--stage1-only", "--workers=2",
           f"--storage={a.storage}", f"--name={name}", f"stage1.steps={a.steps}", "run.log_every=1",
           f"run.checkpoint_every={a.checkpoint_every}"]
    print("$", " ".join(cmd), flush=True)
    resumed_at = None
    with subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as proc:
        for line in proc.stdout:
            if "resumed from step" in line and resumed_at is None:
                resumed_at = time.time()
            if "[stage1] step" not in line:  # the per-step lines would drown the rest
                print(line, end="", flush=True)
    if proc.returncode:
        raise SystemExit(f"{name}: jobs/train.py failed with exit code {proc.returncode}")
    killed_at = float(marker.read_text())
    rows = read_scalars(a.storage / name / "tensorboard" / "stage1")
    first_new = min((wall, step) for wall, step, tag, _ in rows if tag == "loss/D_z" and wall > killed_at)
    resumed_from = json.loads((a.storage / name / "summary.json").read_text())["stage1"]["resumed_from"]
    return {"run": name, "kill_to_restarted_s": resumed_at - killed_at if resumed_at else None,
            "kill_to_first_new_step_s": first_new[0] - killed_at, "first_new_step": first_new[1],
            "resumed_from": resumed_from, "steps_redone": a.kill_step - resumed_from}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--checkpoint-every", type=int, default=20)
    p.add_argument("--kill-step", type=int, default=30)
    p.add_argument("--storage", type=Path, default=ROOT / "benchmarks" / "out" / "runs")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rows = [run_once(f"resume-{stamp}-{i}", a) for i in range(a.repeats)]
    print(f"\n{'run':>28} {'kill->restarted s':>18} {'kill->first step s':>19} {'resumed from':>13} {'redone':>7}")
    for r in rows:
        print(f"{r['run']:>28} {r['kill_to_restarted_s'] or float('nan'):>18.1f} {r['kill_to_first_new_step_s']:>19.1f} "
              f"{r['resumed_from']:>13} {r['steps_redone']:>7}")
    times = [r["kill_to_first_new_step_s"] for r in rows]
    print(f"kill -> first new step: median {statistics.median(times):.1f} s, min {min(times):.1f}, max {max(times):.1f}")
    (a.out / "resume_after_failure.json").write_text(json.dumps({"settings": {k: str(v) for k, v in vars(a).items()},
                                                                  "runs": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
