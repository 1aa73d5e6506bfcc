"""What the faster step buys on the default job: the plain formulation against the fast one given
the same wall time, i.e. more steps (issue 12, point 4).

Arms, run alternately per seed so that drift of the machine hits both alike:
- plain: every speed switch off (SpeedConfig.plain()), the recipe's steps;
- fast:  the speed defaults, with each stage's steps (and stage 2's self-training start) scaled by
         the measured ratio of fast to plain images/s, so its steps fill the plain arm's time.

The ratio comes from benchmarks/speed.py on the default config (one short run first), or --ratio.
Each run is `python jobs/train.py` exactly as a user runs it (benchmarks/default_job.py), so its
wall time includes Ray's start, data loading, the watchdog and evaluation. Both arms' wall times
are reported: the comparison is fair when the fast arm's is not longer.

    python benchmarks/equal_budget.py --seeds 0 1 2
    python benchmarks/equal_budget.py --seeds 0 --ratio 1.21 -- stage1.steps=400 stage2.steps=400

Step counts given after -- are the plain arm's; the fast arm gets them scaled.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from default_job import ROOT, print_table, run_job  # noqa: E402

sys.path.insert(0, str(ROOT))
from cluster.config import ConfigError, load_config  # noqa: E402
from comgan.config import SpeedConfig  # noqa: E402


def plain_overrides() -> list[str]:
    """The overrides that turn the default speed switches into SpeedConfig.plain()."""
    fast, plain = SpeedConfig(), SpeedConfig.plain()
    return [f"speed.{f.name}={str(getattr(plain, f.name)).lower()}" for f in dataclasses.fields(SpeedConfig)
            if getattr(plain, f.name) != getattr(fast, f.name)]


def scaled_steps(ratio: float, job_args: list[str] = ()) -> list[str]:
    """The fast arm's step counts: the recipe's (the default config with the job's own overrides),
    stretched to fill the plain arm's time."""
    cfg = load_config("default", [arg for arg in job_args if "=" in arg and not arg.startswith("-")])
    s1, s2 = cfg.stage1, cfg.stage2
    return [f"stage1.steps={round(s1.steps * ratio)}", f"stage2.steps={round(s2.steps * ratio)}",
            f"stage2.self_train_start={round(s2.self_train_start * ratio)}"]


def measured_ratio() -> float:
    """Fast over plain images/s of the default config's steps, the slower stage's ratio (so the
    fast arm does not get more time than the plain one)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "speed.json"
        cmd = [sys.executable, str(ROOT / "benchmarks" / "speed.py"), "--preset", "default", "--batch", "32",
               "--variants", "plain", "fast", "--steps", "10", "--rounds", "3", "--no-flops", "--out", str(out)]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, cwd=ROOT, check=True)
        stages = json.loads(out.read_text())["stages"]
    return min(stages[s]["fast"]["speedup"] for s in ("stage1", "stage2"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--ratio", type=float, help="fast/plain step speed (default: measured by benchmarks/speed.py)")
    p.add_argument("--storage", default=str(ROOT / "benchmarks" / "out" / "runs"))
    p.add_argument("--prefix", default="budget")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "default_equal_budget.json"))
    p.add_argument("job_args", nargs="*", help="extra arguments for jobs/train.py, both arms (after --)")
    a = p.parse_args()
    ratio = a.ratio or measured_ratio()
    try:
        arms = {"plain": plain_overrides(), "fast": scaled_steps(ratio, a.job_args)}
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"fast/plain step ratio {ratio:.3f}; arms: {json.dumps(arms)}", flush=True)
    rows: dict[str, list[dict]] = {arm: [] for arm in arms}
    for seed in a.seeds:
        for arm, overrides in arms.items():
            # the arm's overrides last: the fast arm's step counts already include the job's own
            row = run_job(seed, f"{a.prefix}-{arm}-seed{seed}", a.storage, [*a.job_args, *overrides])
            if row is None:
                return 1
            rows[arm].append(row)
            Path(a.out).write_text(json.dumps({"ratio": ratio, "arms": arms, "job_args": a.job_args,
                                               "runs": rows}, indent=2))
    for arm, arm_rows in rows.items():
        print(f"\n{arm}: {' '.join(arms[arm])}")
        print_table(arm_rows)
    walls = {arm: statistics.mean(r["wall_s"] for r in arm_rows) for arm, arm_rows in rows.items()}
    print(f"\nmean wall: plain {walls['plain']:.0f} s, fast {walls['fast']:.0f} s; wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
