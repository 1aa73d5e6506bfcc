"""Training-step speed: images/s, achieved GFLOP/s and peak memory of stage 1 and stage 2, for the
plain formulation and each speed switch (comgan/speed.py Formulation), measured side by side.

What it does, on whatever machine it runs (CPU, or one CUDA GPU with --device cuda):
1. Measures the machine's convolution roof: one 3x3 conv of the paper's widest subnet shape
   (128 -> 256 channels at 128x128, batch 8, forward + backward) in NCHW and in channels_last.
2. Builds each stage's state once per variant from the same seed (the same weights) and times
   `--steps` steps of each variant in turn, for `--rounds` rounds, alternating, so drift of the
   machine (thermal, other load) hits every variant alike; reports the median round.
3. Counts each variant's floating-point work per image with torch.utils.flop_counter (convs and
   matmuls, forward and backward) and divides by the measured time: achieved GFLOP/s next to the
   roof. "Useful" GFLOP/s divides the plain formulation's work by each variant's time, so the
   variants compare on the same work.
4. With --memory, runs two steps of each variant once more in a fresh process and reports the
   peak memory they add to what the process held before them (resident set on Linux CPUs;
   torch.cuda.max_memory_allocated on a GPU).

Data loading is not in the timed loop: one fixed batch is reused (in training, DataLoader worker
processes decode the next batches while a step runs). On a GPU every timed region is bracketed by
torch.cuda.synchronize(), after warm-up steps (cuDNN autotuning and allocator growth happen there).

    python benchmarks/speed.py                              # paper preset, batch 8, stage 1 and 2
    python benchmarks/speed.py --preset default --batch 32  # the laptop default
    python benchmarks/speed.py --variants plain fast --compile --memory
    python benchmarks/speed.py --device cuda --batch 32     # adds bf16 and TF32 variants
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cluster.config import load_config  # noqa: E402
from comgan import speed  # noqa: E402
from comgan.config import ConfigError  # noqa: E402
from comgan.ema import make_ema  # noqa: E402
from comgan.networks import Generator  # noqa: E402
from comgan.training import Stage1State, Stage1Step, Stage2State, Stage2Step  # noqa: E402

PLAIN = speed.Formulation.plain()
FAST = speed.Formulation()  # what training runs (winograd and compile off, as by default)
# name -> (speed switches, autocast dtype or None). Each lever alone, then all of them.
VARIANTS = {
    "plain": (PLAIN, None),
    "channels_last": (replace(PLAIN, channels_last=True), None),
    "code_as_bias": (replace(PLAIN, code_as_bias=True), None),
    "fused_glu": (replace(PLAIN, fused_glu=True), None),
    "fused_adam": (replace(PLAIN, fused_optimizer=True), None),
    # Winograd reads NHWC, so alone it comes with channels_last (without it nothing changes).
    "winograd": (replace(PLAIN, channels_last=True, winograd=True), None),
    "fast": (FAST, None),
    "fast+winograd": (replace(FAST, winograd=True), None),         # opt-in: a native kernel
    "fast+compile": (replace(FAST, compile=True), None),
    "fast+tf32": (FAST, None),                                     # GPU only: TF32 in matmuls too
    "fast+bf16": (FAST, torch.bfloat16),                           # autocast, as run.mixed_precision=bf16
}
GPU_ONLY = TF32 = ("fast+tf32",)
DEFAULT_VARIANTS = ("plain", "channels_last", "code_as_bias", "fused_glu", "fused_adam", "winograd", "fast")


# ---------------------------------------------------------------------------------------------
# The machine's roof


def conv_roof(device: str, repeats: int, batch: int = 8, size: int = 128, warmup: int = 2) -> dict[str, float]:
    """GFLOP/s of one 3x3 conv (128 -> 256 ch, 128x128, batch 8), forward + backward, in fp32
    (on a GPU: cuDNN autotuned, TF32 off). --quick passes a smaller batch and size: a smoke run's
    figure, not the machine's roof."""
    speed.set_backend_flags()
    torch.backends.cudnn.allow_tf32 = False
    x = torch.randn(batch, 128, size, size, device=device, requires_grad=True)
    w = torch.randn(256, 128, 3, 3, device=device, requires_grad=True)
    flop = 3 * 2 * batch * 256 * 128 * 9 * size * size   # forward, grad input, grad weight
    result = {}
    for name, fmt in (("nchw", torch.contiguous_format), ("channels_last", torch.channels_last)):
        xi = x.detach().contiguous(memory_format=fmt).requires_grad_()
        wi = w.detach().contiguous(memory_format=fmt).requires_grad_()
        for _ in range(warmup):  # warm-up: oneDNN / cuDNN pick their kernels
            F.conv2d(xi, wi, padding=1).sum().backward()
        times = []
        for _ in range(repeats):
            sync(device)
            t0 = time.perf_counter()
            F.conv2d(xi, wi, padding=1).sum().backward()
            sync(device)
            times.append(time.perf_counter() - t0)
        result[name] = flop / statistics.median(times) / 1e9
    return result


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------
# Steps


class Bench:
    """One variant of one stage: its state, its step, and a fixed batch."""

    def __init__(self, stage: str, cfg, variant: str, device: str, batch: int):
        switches, self.autocast = VARIANTS[variant]
        self.tf32 = variant in TF32
        cfg = with_speed(cfg, switches)
        self.set_backend_flags()
        self.device, self.cfg = device, cfg
        torch.manual_seed(0)  # the same weights for every variant
        res = cfg.model.resolution
        self.real = (torch.rand(batch, 3, res, res) * 2 - 1).to(device)
        if stage == "stage1":
            self.state = Stage1State.create(cfg)
            self._to_device()
            self.step = Stage1Step(self.state, cfg)
        else:
            frozen = make_ema(Generator(cfg.model))  # eval mode, no gradients: as stage 2 loads it
            speed.prepare_networks([frozen], cfg.speed)
            self.state = Stage2State.create(cfg)
            self._to_device()
            self.step = Stage2Step(self.state, cfg, generator=frozen.to(device))

    def _to_device(self):
        for name in self.state.TRAINED + self.state.CARRIED:
            getattr(self.state, name).to(self.device)

    def set_backend_flags(self) -> None:
        """Training's GPU settings (comgan.speed), with TF32 in matmuls and convolutions too for
        the TF32 variant; process-wide, so every variant sets its own before it runs."""
        speed.set_backend_flags()
        if self.tf32:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

    def __call__(self) -> None:
        self.set_backend_flags()
        ctx = torch.autocast(self.device, dtype=self.autocast) if self.autocast else contextlib.nullcontext()
        with ctx:
            self.step(self.real)

    def timed(self, steps: int) -> float:
        self.set_backend_flags()
        sync(self.device)
        t0 = time.perf_counter()
        for _ in range(steps):
            self()
        sync(self.device)
        return time.perf_counter() - t0

    def flop_per_image(self) -> float:
        with FlopCounterMode(display=False) as counter:
            self()
        return counter.get_total_flops() / self.real.shape[0]


def with_speed(cfg, switches):
    cfg = copy.deepcopy(cfg)
    cfg.speed = copy.deepcopy(switches)
    return cfg


def measure_stage(stage: str, cfg, variants: list[str], a) -> dict:
    benches, results = {}, {}
    for v in variants:
        t0 = time.perf_counter()
        b = Bench(stage, cfg, v, a.device, a.batch)
        for _ in range(a.warmup):
            b()
        sync(a.device)
        results[v] = {"warmup_s": time.perf_counter() - t0, "rounds_s": []}
        benches[v] = b
        print(f"  [{stage}] {v}: built and warmed up in {results[v]['warmup_s']:.1f} s", flush=True)
    if not a.no_flops:
        for v in variants:
            results[v]["gflop_per_image"] = benches[v].flop_per_image() / 1e9
    for r in range(a.rounds):
        for v in variants:
            results[v]["rounds_s"].append(benches[v].timed(a.steps))
        line = "  ".join(f"{v} {a.steps * a.batch / results[v]['rounds_s'][-1]:.3f}" for v in variants)
        print(f"  [{stage}] round {r + 1}/{a.rounds} img/s: {line}", flush=True)
    base = variants[0]
    for v in variants:
        seconds = statistics.median(results[v]["rounds_s"]) / a.steps
        results[v]["images_per_s"] = a.batch / seconds
        results[v]["speedup"] = statistics.median(results[base]["rounds_s"]) / statistics.median(results[v]["rounds_s"])
        if "gflop_per_image" in results[v]:
            results[v]["achieved_gflop_s"] = results[v]["gflop_per_image"] * a.batch / seconds
            results[v]["useful_gflop_s"] = results[base]["gflop_per_image"] * a.batch / seconds
    return results


# ---------------------------------------------------------------------------------------------
# Memory, one fresh process per variant


def peak_memory_mb(stage: str, variant: str, a) -> float:
    cmd = [sys.executable, __file__, "--memory-child", stage, variant, "--preset", a.preset,
           "--batch", str(a.batch), "--device", a.device, *sum((["--set", s] for s in a.set), [])]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def memory_child(stage: str, variant: str, a) -> None:
    """Prints the memory two steps take beyond what the process held before them (weights,
    optimiser state after the first step, activations, the frozen generator's in stage 2)."""
    cfg = build_config(a)
    b = Bench(stage, cfg, variant, a.device, a.batch)
    if a.device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        b()
        b()
        print((torch.cuda.max_memory_allocated() - before) / 2 ** 20)
        return
    before = resident_mb()
    Path("/proc/self/clear_refs").write_text("5")  # Linux: resets the peak (VmHWM) to the current RSS
    b()
    b()
    print(resident_mb("VmHWM:") - before)


def resident_mb(field: str = "VmRSS:") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    raise RuntimeError("--memory on CPU needs Linux (/proc/self/status)")


# ---------------------------------------------------------------------------------------------


def build_config(a):
    cfg = load_config(a.preset, list(a.set))
    cfg.stage1.batch_size = cfg.stage2.batch_size = a.batch
    return cfg


def machine(device: str) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine()}
    try:
        model = [line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")]
        info["cpu"] = model[0].split(":", 1)[1].strip()
    except (OSError, IndexError):
        pass
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def print_table(stage: str, results: dict, roof: dict) -> None:
    print(f"\n{stage}: images/s per variant (median of the rounds), speed-up against the first, work per "
          f"image; conv roof here: {roof['nchw']:.0f} GFLOP/s NCHW, {roof['channels_last']:.0f} channels_last")
    print(f"{'variant':<16}{'img/s':>10}{'x':>8}{'GFLOP/img':>11}{'GFLOP/s':>10}{'useful':>9}{'peak MB':>10}")
    for v, r in results.items():
        g = f"{r['gflop_per_image']:>11.1f}{r['achieved_gflop_s']:>10.0f}{r['useful_gflop_s']:>9.0f}" \
            if "gflop_per_image" in r else f"{'':>30}"
        mem = f"{r['peak_mb']:>10.0f}" if "peak_mb" in r else ""
        print(f"{v:<16}{r['images_per_s']:>10.3f}{r['speedup']:>8.2f}{g}{mem}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="paper", help="config preset or YAML (default: paper)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--batch", type=int, default=8, help="batch of both stages (default 8)")
    p.add_argument("--stages", nargs="+", default=["stage1", "stage2"], choices=["stage1", "stage2"])
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS),
                   help=f"first is the baseline (default: {' '.join(DEFAULT_VARIANTS)}; on cuda also fast+tf32 fast+bf16)")
    p.add_argument("--compile", action="store_true", help="add the fast+compile variant")
    p.add_argument("--steps", type=int, default=2, help="steps per variant per round (default 2)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per variant first (default 1)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--memory", action="store_true", help="also peak memory, one fresh process per variant")
    p.add_argument("--no-flops", action="store_true", help="skip the FLOP count (one more step per variant)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run (the tests): the conv roof on batch 1 at 32x32, one warm-up, one repeat "
                        "(seconds, not a minute on a CPU); its figure is not the machine's roof")
    p.add_argument("--out", help="JSON file (default: benchmarks/results/speed_<preset>_b<batch>_<device>.json)")
    p.add_argument("--memory-child", nargs=2, metavar=("STAGE", "VARIANT"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        print("speed.py: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    try:
        cfg = build_config(a)
    except ConfigError as e:
        print(f"speed.py: {e}", file=sys.stderr)
        return 2
    if a.memory_child:
        memory_child(*a.memory_child, a)
        return 0
    variants = list(a.variants or DEFAULT_VARIANTS + (("fast+tf32", "fast+bf16") if a.device == "cuda" else ()))
    if a.compile and "fast+compile" not in variants:
        variants.append("fast+compile")
    if a.device == "cpu" and any(v in GPU_ONLY for v in variants):
        print(f"speed.py: {', '.join(v for v in variants if v in GPU_ONLY)} only means something on a GPU",
              file=sys.stderr)
        return 2
    print(f"speed.py: preset {a.preset}, batch {a.batch}, {a.device}, {torch.get_num_threads()} threads; "
          f"variants {' '.join(variants)}", flush=True)
    roof = conv_roof(a.device, repeats=1, batch=1, size=32, warmup=1) if a.quick else conv_roof(a.device, repeats=3)
    print(f"  conv roof: {roof['nchw']:.0f} GFLOP/s NCHW, {roof['channels_last']:.0f} GFLOP/s channels_last", flush=True)
    report = {"preset": a.preset, "overrides": a.set, "batch": a.batch, "device": a.device, "steps": a.steps,
              "rounds": a.rounds, "machine": machine(a.device), "conv_roof_gflop_s": roof,
              "date": time.strftime("%Y-%m-%d"), "stages": {}}
    if a.quick:
        report["quick"] = True  # the roof above is a smoke run's
    for stage in a.stages:
        results = measure_stage(stage, cfg, variants, a)
        if a.memory:
            for v in variants:
                results[v]["peak_mb"] = peak_memory_mb(stage, v, a)
        report["stages"][stage] = results
        print_table(stage, results, roof)
    report["speed_defaults"] = asdict(FAST)
    out = Path(a.out or ROOT / "benchmarks" / "results" / f"speed_{a.preset}_b{a.batch}_{a.device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
