"""What the faster step buys on the default job: the plain formulation against the fast one given
the same wall time, i.e. more steps (issue 12, point 4).

Arms, per seed, in turn (plain first on even seeds, fast first on odd ones, so that a steady
drift of the machine does not always favour one arm):
- plain: every speed switch off (SpeedConfig.plain()), the recipe's steps;
- fast:  the speed defaults, with each stage's steps (and stage 2's self-training start) scaled by
         the measured ratio of fast to plain images/s, so its steps fill the plain arm's time.

The ratio comes from benchmarks/speed.py on the same config (one short run first), or --ratio.
Each run is `python jobs/train.py` exactly as a user runs it (benchmarks/default_job.py), so its
wall time includes Ray's start, data loading, the watchdog and evaluation. Both arms' wall times
are reported: the comparison is fair when the fast arm's is not longer.

    python benchmarks/equal_budget.py --seeds 0 1 2 --out benchmarks/results/default_equal_budget.json
    python benchmarks/equal_budget.py --seeds 0 --ratio 1.21 --prefix short -- stage1.steps=400 stage2.steps=400

Arguments after -- are key=value overrides of the default config for both arms (presets are
not taken: the step ratio and the recipe's step counts are the default config's); step counts
given there are the plain arm's, and the fast arm gets them scaled.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from default_job import ROOT, JobFailed, print_table, run_job  # noqa: E402
from speed import machine  # noqa: E402

sys.path.insert(0, str(ROOT))
from cluster.config import ConfigError, load_config  # noqa: E402
from comgan.config import SpeedConfig  # noqa: E402


def plain_overrides() -> list[str]:
    """Every speed switch as SpeedConfig.plain() has it (all of them, so that no override given
    for both arms can leave one on in the plain arm)."""
    plain = SpeedConfig.plain()
    return [f"speed.{f.name}={str(getattr(plain, f.name)).lower()}" for f in dataclasses.fields(SpeedConfig)]


def scaled_steps(ratio: float, overrides: list[str] = ()) -> list[str]:
    """The fast arm's step counts: the recipe's (the default config with the job's overrides),
    stretched to fill the plain arm's time."""
    cfg = load_config("default", overrides)
    s1, s2 = cfg.stage1, cfg.stage2
    return [f"stage1.steps={round(s1.steps * ratio)}", f"stage2.steps={round(s2.steps * ratio)}",
            f"stage2.self_train_start={round(s2.self_train_start * ratio)}"]


def arm_arguments(ratio: float, overrides: list[str]) -> dict[str, list[str]]:
    """Each arm's full list of job overrides: the shared ones first, the arm's own last (they win)."""
    return {"plain": [*overrides, *plain_overrides()], "fast": [*overrides, *scaled_steps(ratio, overrides)]}


def measured_ratio(overrides: list[str], batch: int) -> tuple[float, dict]:
    """Fast over plain images/s of the config's steps: the lower of the two stages' ratios (so the
    fast arm does not get more time than the plain one), and speed.py's per-stage figures."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "speed.json"
        cmd = [sys.executable, str(ROOT / "benchmarks" / "speed.py"), "--preset", "default",
               "--batch", str(batch), *[f"--set={o}" for o in overrides],
               "--variants", "plain", "fast", "--steps", "10", "--rounds", "3", "--no-flops", "--out", str(out)]
        print("$", " ".join(cmd), flush=True)
        if subprocess.call(cmd, cwd=ROOT):
            raise JobFailed(1, "benchmarks/speed.py failed (see above); give --ratio to skip it")
        stages = json.loads(out.read_text())["stages"]
    per_stage = {s: {v: stages[s][v]["images_per_s"] for v in ("plain", "fast")} for s in stages}
    return min(stages[s]["fast"]["speedup"] for s in stages), per_stage


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--ratio", type=float, help="fast/plain step speed, > 0 (default: measured by benchmarks/speed.py)")
    p.add_argument("--storage", default=str(ROOT / "benchmarks" / "out" / "runs"))
    p.add_argument("--prefix", default="budget", help="run names: <prefix>-<arm>-seed<seed> (must not exist yet)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "equal_budget.json"))
    p.add_argument("overrides", nargs="*", help="key=value overrides of the default config, both arms (after --)")
    a = p.parse_args()
    if a.ratio is not None and a.ratio <= 0:
        p.error(f"--ratio must be > 0, got {a.ratio}")
    if any(not o or o.startswith("-") or "=" not in o for o in a.overrides):
        p.error("after -- give key=value config overrides only (the default config; presets are not taken)")
    names = {(seed, arm): f"{a.prefix}-{arm}-seed{seed}" for seed in a.seeds for arm in ("plain", "fast")}
    taken = [n for n in names.values() if (Path(a.storage) / n).exists()]
    if taken:  # a rerun would resume the finished runs and report their few seconds as wall time
        p.error(f"runs already exist under {a.storage}: {', '.join(taken)}; use another --prefix")
    try:  # a mistake in the overrides is reported before anything runs
        cfg = load_config("default", a.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        ratio, step_speed = ((a.ratio, None) if a.ratio is not None
                             else measured_ratio(a.overrides, cfg.stage1.batch_size))
    except JobFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code
    arms = arm_arguments(ratio, a.overrides)
    print(f"fast/plain step ratio {ratio:.3f}; arms: {json.dumps(arms)}", flush=True)
    report = {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d"), "machine": machine("cpu"),
              "ratio": ratio, "step_images_per_s": step_speed, "arms": arms,
              "complete": False, "runs": {arm: [] for arm in arms}}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    for seed in a.seeds:
        for arm in (("plain", "fast") if seed % 2 == 0 else ("fast", "plain")):
            try:
                row = run_job(seed, names[seed, arm], a.storage, arms[arm])
            except JobFailed as e:
                print(f"error: {e}; the runs so far are in {a.out}", file=sys.stderr)
                return e.code
            report["runs"][arm].append(row)
            Path(a.out).write_text(json.dumps(report, indent=2))
    report["complete"] = True
    Path(a.out).write_text(json.dumps(report, indent=2))
    for arm, rows in report["runs"].items():
        print(f"\n{arm}: {' '.join(arms[arm])}")
        print_table(rows)
    walls = {arm: statistics.mean(r["wall_s"] for r in rows) for arm, rows in report["runs"].items()}
    print(f"\nmean wall: plain {walls['plain']:.0f} s, fast {walls['fast']:.0f} s; wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
