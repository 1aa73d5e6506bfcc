"""How often the default recipe holds: many draws, each a seed under one of two CPU numerics.

A GAN recipe's outcome depends on the seed and on how the CPU's kernels round (docs/DESIGN.md,
section 7). A draw is one (numerics, seed) pair:

- `native`: the machine's own kernels;
- `avx2`: ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2, what an AVX2-only CPU computes (on a
  machine without AVX-512 these change nothing: use `threads1` there, one thread against two,
  which changes the order of reductions);
- `threads1`: the native kernels on one thread.

Every draw runs in its own process (the numerics are fixed when torch loads). Two modes:

- `--mode screen` (default): the recipe's own steps in one process, no Ray, the synthetic set held
  in memory (the same train and held-out sets the job writes). Stage 1 runs to the end whatever
  the watchdog says, and every check is recorded, with the step where the job's watchdog would
  have restarted it: so a draw tells both what the watchdog did and how the run would have ended
  without the restart. Then stage 2 and the held-out strict IoU, as in the job.
- `--mode job`: `python jobs/train.py` exactly as a user runs it (local Ray, restarts included),
  read back from its summary.json.

Rows are appended to `--out` as each draw ends, and draws already there (same mode, label and
overrides) are skipped, so an interrupted benchmark continues where it stopped.

    python benchmarks/robustness.py --seeds 0-7                      # screen today's default
    python benchmarks/robustness.py --seeds 0-7 --label warmup150 -- stage1.beta_warmup=150
    python benchmarks/robustness.py --mode job --seeds 0-7 --out benchmarks/results/robustness_job.json
    python benchmarks/robustness.py --seeds 0-7 --label s2-x --generators-of default -- stage2.lr=5e-4
    python benchmarks/robustness.py --table benchmarks/results/robustness_screen.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NUMERICS = {
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "threads1": {},  # the thread count is set in the draw
}
POOR_IOU = 0.80  # a draw below this strict IoU failed (issue: no draw below 0.80)
LATE_STEP = 550  # "late" stage 1: the steps after this one (of the default's 800)


def parse_seeds(text: str) -> list[int]:
    """'0-7' or '0,3,5' or '4'."""
    seeds = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        seeds.extend(range(int(lo), int(hi or lo) + 1))
    return seeds


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ---------------------------------------------------------------------------------------------
# One draw in this process (--draw): the recipe's steps without Ray


def save_grid(path: str, generator, model_cfg, images, truth, pred, count: int = 16) -> None:
    """One PNG: generated composites / x_f / x_b / masks (watchdog codes: f cycles through every
    category), then held-out images / ground truth / predictions."""
    import torch
    from PIL import Image

    from comgan.visualize import grid_to_uint8, image_grid
    from comgan.watchdog import watch_codes
    with torch.no_grad():
        out = generator(*watch_codes(model_cfg, count)[:3])
    grid = image_grid([out.image, out.fg, out.bg, out.mask, images[:count], truth[:count].float(), pred[:count].float()])
    picture = Image.fromarray(grid_to_uint8(grid))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    picture.resize((picture.width * 3, picture.height * 3), Image.NEAREST).save(path)


def screen_draw(seed: int, numerics: str, config: str, overrides: list[str], grid_path: str = "",
                generator_path: str = "", curve_every: int = 0) -> dict:
    """One draw in this process. With `generator_path`, stage 2 only, on that saved generator.
    With `curve_every`, S and its EMA teacher are also scored every that many stage-2 steps."""
    import numpy as np
    import torch

    from cluster.config import load_config
    from comgan.artifacts import from_bytes, generator_artifact, load_generator, to_bytes
    from comgan.export import export_generator
    from comgan.inference import INFERENCE_BATCH
    from comgan.metrics import segmentation_scores
    from data_shards.synthetic import synthetic_samples

    torch.set_num_threads(1 if numerics == "threads1" else min(2, os.cpu_count() or 1))
    cfg = load_config(config, [*overrides, f"run.seed={seed}"])
    d, m = cfg.data, cfg.model

    def images_and_masks(count, set_seed):
        samples = list(synthetic_samples(count, m.resolution, d.synthetic_styles, set_seed))
        images = torch.tensor(np.stack([s["image"] for s in samples])).permute(0, 3, 1, 2).float() / 127.5 - 1
        return images, torch.tensor(np.stack([s["mask"] for s in samples]))[:, None] > 127

    train, _ = images_and_masks(d.synthetic_train_size, 1000)   # the seeds pipeline.ensure_data writes
    held_out, truth = images_and_masks(d.synthetic_eval_size, 2000)
    data = torch.Generator().manual_seed(seed + 7)

    def batch(size):
        x = train[torch.randint(len(train), (size,), generator=data)]
        if d.hflip:
            flip = torch.rand(size, generator=data) < 0.5
            x[flip] = x[flip].flip(-1)
        return x

    torch.manual_seed(seed)
    t0 = time.time()
    if generator_path:
        generator, _ = load_generator(from_bytes(Path(generator_path).read_bytes()), m, generator_path)
        row = {}
    else:
        s1, row = screen_stage1(cfg, batch)
        generator, done, _ = export_generator(s1.G_ema, cfg, INFERENCE_BATCH)
        row["swapped_fg_bg"] = done["swapped_fg_bg"]
        if grid_path:
            Path(grid_path).parent.mkdir(parents=True, exist_ok=True)
            Path(grid_path).with_suffix(".pt").write_bytes(to_bytes(generator_artifact(generator, m)))
    def predict(net):
        with torch.no_grad():
            return torch.cat([net(held_out[i:i + 100]) for i in range(0, len(held_out), 100)]) > 0.5

    def score(net) -> float:
        return segmentation_scores(predict(net), truth)["iou_strict"].mean().item()

    t1 = time.time()
    S, other, row["s2_curve"] = screen_stage2(cfg, generator, batch, score, curve_every)
    t2 = time.time()

    pred = predict(S)
    scores = segmentation_scores(pred, truth)
    # The network the job did not export (S's EMA teacher, or S itself), scored for comparison.
    row["iou_other_net"] = segmentation_scores(predict(other), truth)["iou_strict"].mean().item()
    if grid_path:
        save_grid(grid_path, generator, m, held_out, truth, pred)
    return {**row, "iou": scores["iou_strict"].mean().item(), "iou_paper": scores["iou_paper"].mean().item(),
            "stage1_s": t1 - t0, "stage2_s": t2 - t1, "wall_s": t2 - t0,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}


def screen_stage1(cfg, batch) -> tuple:
    """Stage 1 to its end whatever the watchdog finds: (state, the watchdog's record)."""
    from comgan.inference import INFERENCE_BATCH
    from comgan.training import Stage1State, Stage1Step
    from comgan.watchdog import WATCH_SAMPLES, counts_toward_streak, health_score, measure, trivial_reason

    m, run = cfg.model, cfg.run
    s1 = Stage1State.create(cfg)
    step1 = Stage1Step(s1, cfg)
    checks, previous, streak, restart_at, grad_curve = [], None, 0, None, []
    for i in range(1, cfg.stage1.steps + 1):
        stats = step1(batch(cfg.stage1.batch_size))
        if i % run.log_every == 0:
            grad_curve.append([i, float(stats["grad/mask"]), float(stats["grad/mask_net"])])
        if run.watch_every and (i % run.watch_every == 0 or i == cfg.stage1.steps):
            watched = measure(s1.G_ema, m, WATCH_SAMPLES, INFERENCE_BATCH)
            final = i == cfg.stage1.steps
            reason = trivial_reason(watched, final=final)
            streak = streak + 1 if counts_toward_streak(reason, watched, previous) else 0
            previous = watched
            live = measure(s1.G, m, WATCH_SAMPLES, INFERENCE_BATCH)  # G itself, not its EMA
            checks.append({"step": i, "reason": reason or "", "streak": streak, "soft": watched["watch/mask_soft"],
                           "degenerate": watched["watch/mask_degenerate"], "health": health_score(watched),
                           "area": watched["watch/mask_mean"], "soft_live": live["watch/mask_soft"],
                           "health_live": health_score(live)})
            # The job stops an attempt on a streak before the end, or on any finding at the end.
            if restart_at is None and ((streak >= run.watch_patience and not final) or (final and reason)):
                restart_at = i
    last = checks[-1] if checks else {}
    return s1, {"health": last.get("health"), "final_reason": last.get("reason", ""),
                "findings": sum(bool(c["reason"]) for c in checks), "restart_at": restart_at,
                "restarts": int(restart_at is not None), "checks": checks, "grad_curve": grad_curve}


def screen_stage2(cfg, generator, batch, score, curve_every: int = 0):
    """Stage 2 on the frozen generator: (the segmenter the job would export, the other one of S
    and its EMA teacher, both in eval mode; [step, S's IoU, the teacher's IoU] every
    `curve_every` steps, as `score` gives them on the network in eval mode; [] without it). The
    run is the same with or without the curve: each network goes back to its mode, and scoring
    draws no random numbers."""
    from comgan.training import Stage2State, Stage2Step

    def in_eval_mode(net) -> float:
        was_training = net.training
        net.eval()
        try:
            return score(net)
        finally:
            net.train(was_training)

    s2 = Stage2State.create(cfg)
    step2 = Stage2Step(s2, cfg, generator=generator)
    curve = []
    for i in range(1, cfg.stage2.steps + 1):
        step2(batch(cfg.stage2.batch_size))
        if curve_every and (i % curve_every == 0 or i == cfg.stage2.steps):
            curve.append([i, in_eval_mode(s2.S), in_eval_mode(s2.S_teacher)])
    exported, other = (s2.S_teacher, s2.S) if cfg.stage2.self_train.export_teacher else (s2.S, s2.S_teacher)
    return exported.eval(), other.eval(), curve


def job_draw(seed: int, numerics: str, config: str, overrides: list[str], storage: str, name: str) -> dict:
    """The main job as a user runs it; its summary.json as one row."""
    cmd = [sys.executable, str(ROOT / "jobs" / "train.py"), f"--config={config}", f"--storage={storage}",
           f"--name={name}", f"run.seed={seed}", *overrides]
    t0 = time.time()
    rc = subprocess.call(cmd, cwd=ROOT, env=draw_env(numerics))
    wall = time.time() - t0
    path = Path(storage) / name / "summary.json"
    if rc or not path.exists():
        return {"error": f"jobs/train.py exited with {rc}", "wall_s": wall}
    summary = json.loads(path.read_text())
    stage1, ev = summary.get("stage1", {}), summary.get("eval", {})
    collapsed = summary.get("stage1_collapsed", [])
    return {"iou": ev.get("segmenter", {}).get("iou_strict"), "iou_paper": ev.get("segmenter", {}).get("iou_paper"),
            "health": stage1.get("watch/health"), "final_reason": stage1.get("watch/now", ""),
            "findings": int(bool(stage1.get("watch/reason"))) + len(collapsed),
            "restart_at": collapsed[0].get("step") if collapsed else None, "restarts": len(collapsed),
            "attempts": collapsed, "stage1_s": stage1.get("perf/seconds"),
            "stage2_s": summary.get("stage2", {}).get("perf/seconds"), "wall_s": wall}


# ---------------------------------------------------------------------------------------------
# The driver: draws in their own processes, rows appended as they end


def draw_env(numerics: str) -> dict:
    env = {**os.environ, **NUMERICS[numerics]}
    if numerics == "threads1":
        env["OMP_NUM_THREADS"] = "1"
    return env


def load_rows(path: Path) -> list[dict]:
    return json.loads(path.read_text())["rows"] if path.exists() else []


def save_rows(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"cpu": cpu_model(), "rows": rows}, indent=1))
    os.replace(tmp, path)


def draw_picture(out, label: str, numerics: str, seed: int) -> Path:
    """Where a screen draw of results file `out` leaves its picture; its generator is beside it, .pt."""
    return Path(out).with_suffix("") / f"{label}_{numerics}_seed{seed}.png"


def late_mean(row: dict, column: int) -> float:
    """The mean of a draw's grad_curve column (1: the mask, 2: M's weights) after LATE_STEP (all
    of it in runs shorter than that)."""
    curve = row["grad_curve"]
    return statistics.mean(g[column] for g in ([g for g in curve if g[0] > LATE_STEP] or curve))


def run_draws(a) -> None:
    out = Path(a.out)
    rows = load_rows(out)
    key = lambda r: (r["mode"], r["label"], tuple(r["overrides"]), r["numerics"], r["seed"])  # noqa: E731
    done = {key(r) for r in rows}
    # Numerics alternate draw by draw, so a drifting machine weighs on both alike.
    draws = [(n, s) for s in a.seeds for n in a.numerics]
    for i, (numerics, seed) in enumerate(draws, 1):
        row = {"mode": a.mode, "label": a.label, "overrides": a.overrides, "numerics": numerics, "seed": seed,
               "config": a.config, "cpu": cpu_model()}
        if key(row) in done:
            continue
        print(f"[robustness] draw {i}/{len(draws)}: {a.label} seed {seed} under {numerics}", flush=True)
        if a.mode == "screen":
            grid = draw_picture(a.out, a.label, numerics, seed)
            cmd = [sys.executable, __file__, "--draw", f"--seed={seed}", f"--numerics={numerics}",
                   f"--config={a.config}", f"--grid={grid}", f"--curve-every={a.curve_every}", "--", *a.overrides]
            source = None
            if a.generators_of:  # stage 2 only, on the generator that label's draw saved
                source = next((r for r in rows if r["mode"] == "screen" and r["label"] == a.generators_of
                               and r["numerics"] == numerics and r["seed"] == seed and "error" not in r), None)
                saved = draw_picture(a.out, a.generators_of, numerics, seed).with_suffix(".pt")
                if source is None or not saved.exists():
                    print(f"  no saved generator of {a.generators_of} for this draw: skipped", flush=True)
                    continue
                cmd.insert(-1 - len(a.overrides), f"--generator={saved}")
            proc = subprocess.run(cmd, env=draw_env(numerics), capture_output=True, text=True)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            result = json.loads(lines[-1]) if proc.returncode == 0 and lines else {
                "error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]}
        else:
            name = f"robust-{a.label}-{numerics}-seed{seed}"
            result = job_draw(seed, numerics, a.config, a.overrides, a.storage, name)
        if a.mode == "screen" and a.generators_of and "error" not in result:
            kept = ("health", "final_reason", "findings", "restart_at", "restarts", "checks", "grad_curve", "stage1_s")
            result.update({k: source.get(k) for k in kept}, generators_of=a.generators_of,
                          wall_s=(source.get("stage1_s") or 0) + result["stage2_s"])
        row.update(result)
        rows.append(row)
        save_rows(out, rows)
        print("  " + row_line(row), flush=True)
    print_table([r for r in rows if r["mode"] == a.mode and r["label"] == a.label])


def row_line(r: dict) -> str:
    if "error" in r:
        return f"{r['numerics']:>8} seed {r['seed']:>2}: ERROR {r['error']}"
    restart = f"restart at {r['restart_at']}" if r.get("restart_at") else "no restart"
    health = f"{r['health']:.3f}" if r.get("health") is not None else "-"
    return (f"{r['numerics']:>8} seed {r['seed']:>2}: strict IoU {r['iou']:.3f}  health {health}  "
            f"findings {r['findings']}  {restart}  {r['wall_s']:.0f} s  {r.get('final_reason', '')}"
            + (f"  (other net {r['iou_other_net']:.3f})" if r.get("iou_other_net") is not None else ""))


def summarise(rows: list[dict]) -> dict:
    ok = [r for r in rows if "error" not in r and r.get("iou") is not None]
    ious = [r["iou"] for r in ok]
    flagged = [r for r in ok if r.get("restart_at")]
    return {
        "draws": len(rows), "errors": len(rows) - len(ok),
        "success_share": sum(i >= POOR_IOU for i in ious) / max(1, len(rows)),
        "min_iou": min(ious, default=float("nan")), "median_iou": statistics.median(ious) if ious else float("nan"),
        "restart_share": len(flagged) / max(1, len(ok)),
        # Of the restarts: how many would have ended poor without them (the watchdog was right)
        # and how many hit a run that ended well anyway (in screen mode runs go on regardless).
        "restart_on_poor": sum(r["iou"] < POOR_IOU for r in flagged),
        "restart_on_good": sum(r["iou"] >= POOR_IOU for r in flagged),
        "poor_unflagged": sum(r["iou"] < POOR_IOU and not r.get("restart_at") for r in ok),
        "median_wall_s": statistics.median([r["wall_s"] for r in ok]) if ok else float("nan"),
    }


def print_table(rows: list[dict]) -> None:
    for r in sorted(rows, key=lambda r: (r["numerics"], r["seed"])):
        print(row_line(r))
    groups = {"all": rows, **{n: [r for r in rows if r["numerics"] == n] for n in sorted({r["numerics"] for r in rows})}}
    print(f"{'numerics':>8} {'draws':>5} {'ok>=0.80':>8} {'min':>6} {'median':>6} {'restarts':>8} "
          f"{'on poor':>7} {'on good':>7} {'poor, no flag':>13} {'median s':>8}")
    for name, group in groups.items():
        s = summarise(group)
        print(f"{name:>8} {s['draws']:>5} {s['success_share']:>8.0%} {s['min_iou']:>6.3f} {s['median_iou']:>6.3f} "
              f"{s['restart_share']:>8.0%} {s['restart_on_poor']:>7} {s['restart_on_good']:>7} "
              f"{s['poor_unflagged']:>13} {s['median_wall_s']:>8.0f}")


def print_gauges(rows: list[dict]) -> None:
    """Whether stage 1 foretells a poor draw: per screened draw (worst first), strict IoU, the mean
    2-norm of the gradient on M's weights and on the mask over steps 551-800 (the paper's Figure 4
    gauge), and the faint-mask share at each watchdog check; then how well each gauge splits the
    draws under POOR_IOU from the rest (the best threshold's share of draws it puts on the right side)."""
    draws = [r for r in rows if r["mode"] == "screen" and r.get("grad_curve") and r.get("iou") is not None
             and not r.get("generators_of")]
    gauges = {}
    for r in sorted(draws, key=lambda r: r["iou"]):
        soft = {c["step"]: c["soft"] for c in r.get("checks", [])}
        g = {"grad M late": late_mean(r, 2), "grad mask late": late_mean(r, 1),
             **{f"faint {step}": share for step, share in sorted(soft.items())}}
        gauges[id(r)] = g
        print(f"{r['label'][:18]:18} {r['numerics']:>6} seed {r['seed']:>2}  IoU {r['iou']:.3f}  "
              + "  ".join(f"{k} {v:.2f}" for k, v in g.items()))
    poor = {id(r) for r in draws if r["iou"] < POOR_IOU}
    names = dict.fromkeys(k for g in gauges.values() for k in g)
    for name in names:
        values = sorted((g[name], key in poor) for key, g in gauges.items() if name in g)
        # A high value flags a poor draw: the best cut's accuracy, over every cut between values.
        best = max(sum((v >= cut) == bad for v, bad in values) for cut, _ in values) / len(values)
        none_poor = sum(not bad for _, bad in values) / len(values)
        print(f"{name:>16}: the best threshold puts {best:.0%} of {len(values)} draws on the right side "
              f"(calling every draw good: {none_poor:.0%})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("overrides", nargs="*", help="config overrides (key=value) for every draw")
    p.add_argument("--seeds", type=parse_seeds, default=parse_seeds("0-7"), help="e.g. 0-7 or 0,2,5")
    p.add_argument("--numerics", nargs="+", choices=sorted(NUMERICS), default=["native", "avx2"])
    p.add_argument("--mode", choices=("screen", "job"), default="screen")
    p.add_argument("--config", default="default")
    p.add_argument("--label", default="default", help="names this recipe's rows")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "robustness.json"))
    p.add_argument("--storage", default=str(ROOT / "benchmarks" / "out" / "runs"), help="job mode: runs folder")
    p.add_argument("--table", metavar="JSON", help="print the table of a results file and stop")
    p.add_argument("--gauges", metavar="JSON", help="print, per screened draw of a results file, its IoU next to "
                   "what stage 1 showed (late gradient on M, faint-mask shares) and stop")
    p.add_argument("--draw", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    p.add_argument("--grid", default="", help=argparse.SUPPRESS)
    p.add_argument("--generator", default="", help=argparse.SUPPRESS)
    p.add_argument("--generators-of", metavar="LABEL",
                   help="screen mode: stage 2 only, on the generators that LABEL's draws saved (stage-2 variants)")
    p.add_argument("--curve-every", type=int, default=0, metavar="STEPS",
                   help="screen mode: also score S and its EMA teacher every STEPS stage-2 steps (row's s2_curve)")
    a = p.parse_args()
    if a.draw:
        print(json.dumps(screen_draw(a.seed, a.numerics[0] if isinstance(a.numerics, list) else a.numerics,
                                     a.config, a.overrides, a.grid, a.generator, a.curve_every)))
        return
    if a.gauges:
        print_gauges(load_rows(Path(a.gauges)))
        return
    if a.table:
        rows = load_rows(Path(a.table))
        for label in dict.fromkeys((r["mode"], r["label"]) for r in rows):
            print(f"== {label[0]} / {label[1]}")
            print_table([r for r in rows if (r["mode"], r["label"]) == label])
        return
    run_draws(a)


if __name__ == "__main__":
    main()
