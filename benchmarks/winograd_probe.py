"""Per layer: is Winograd F(4x4, 3x3) (comgan/winograd.py, the native kernel) faster than the
direct 3x3 conv (oneDNN) at each 3x3 conv shape of a preset's G and S, forward + backward?

For every distinct (input channels, output channels, side) of the preset's Conv3x3 layers, times
forward + backward (input and weight gradients) of the direct conv and of the Winograd one on the
same channels_last input, alternating, and prints the ratio and whether `winograd.applies` routes
that shape (the width thresholds MIN_IN_CHANNELS / MIN_OUT_CHANNELS / MIN_PIXELS); with --out,
writes the table as JSON. Use it to check the thresholds on a new machine.

    python benchmarks/winograd_probe.py                       # paper preset, batch 8
    python benchmarks/winograd_probe.py --preset default --batch 32

An earlier version of this probe wrote Winograd F(2x2, 3x3) in PyTorch ops (2026-11-25, 2-core AMD
EPYC): 3.4x slower forward than oneDNN's direct conv, 4.3x forward + backward; the memory-bound
tile transforms, run as separate PyTorch ops, cost more than the multiplications saved. The
native kernel fuses them per tile block.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cluster.config import load_config  # noqa: E402
from comgan import winograd  # noqa: E402
from comgan.networks import Conv3x3, Subnet, build_stage1_networks, build_stage2_networks, sample_codes  # noqa: E402


def conv_shapes(cfg) -> list[tuple[int, int, int]]:
    """(input channels, output channels, side) of each distinct Conv3x3 in G and S, in the order
    met. The side comes from a forward pass at the preset's resolution."""
    nets = {**build_stage1_networks(cfg.model), **build_stage2_networks(cfg.model)}
    shapes: list[tuple[int, int, int]] = []

    def record(module, inputs):
        shape = (module.in_channels, module.out_channels, inputs[0].shape[-1])
        if shape not in shapes:
            shapes.append(shape)

    for name in ("G", "S"):
        for m in nets[name].modules():
            if isinstance(m, Conv3x3):
                m.register_forward_pre_hook(record)
    with torch.no_grad():
        nets["G"].eval()(*sample_codes(2, cfg.model)[:3])
        nets["S"].eval()(torch.zeros(2, 3, cfg.model.resolution, cfg.model.resolution))
    # F's and B's first conv runs inside conv_with_constant_channels (the code as a bias), not
    # through the module, and reads phi's channels only.
    for m in nets["G"].modules():
        if isinstance(m, Subnet) and m.code_len:
            first = m.body[0][0]
            shape = (first.in_channels - m.code_len, first.out_channels, cfg.model.resolution)
            if shape not in shapes:
                shapes.append(shape)
    return shapes


def time_pair(batch: int, c_in: int, c_out: int, side: int, repeats: int) -> dict:
    torch.manual_seed(0)
    x = torch.randn(batch, c_in, side, side).contiguous(memory_format=torch.channels_last).requires_grad_()
    w = (torch.randn(c_out, c_in, 3, 3) * 0.05).contiguous(memory_format=torch.channels_last).requires_grad_()
    g = torch.randn(batch, c_out, side, side).contiguous(memory_format=torch.channels_last)
    ways = {"direct": lambda: F.conv2d(x, w, None, 1, 1), "winograd": lambda: winograd._WinogradConv3x3.apply(x, w)}
    times: dict[str, list[float]] = {k: [] for k in ways}
    for fn in ways.values():  # warm-up
        torch.autograd.grad(fn(), [x, w], g)
    for _ in range(repeats):
        for name, fn in ways.items():
            t0 = time.perf_counter()
            torch.autograd.grad(fn(), [x, w], g)
            times[name].append(time.perf_counter() - t0)
    direct, wino = statistics.median(times["direct"]), statistics.median(times["winograd"])
    x_, w_ = x.detach(), w.detach()
    return {"c_in": c_in, "c_out": c_out, "side": side, "direct_ms": direct * 1e3, "winograd_ms": wino * 1e3,
            "speedup": direct / wino, "routed": winograd.applies(x_, w_)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="paper")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", help="JSON file for the table")
    a = p.parse_args(argv)
    if winograd.extension() is None:
        print("error: the native Winograd kernel could not be built on this machine", file=sys.stderr)
        return 2
    cfg = load_config(a.preset)
    rows = []
    print(f"{'in':>5} {'out':>5} {'side':>5} {'direct ms':>10} {'winograd ms':>12} {'x':>6}  routed")
    for c_in, c_out, side in conv_shapes(cfg):
        r = time_pair(a.batch, c_in, c_out, side, a.repeats)
        rows.append(r)
        print(f"{c_in:>5} {c_out:>5} {side:>5} {r['direct_ms']:>10.1f} {r['winograd_ms']:>12.1f} "
              f"{r['speedup']:>6.2f}  {r['routed']}", flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps({"preset": a.preset, "batch": a.batch, "threads": torch.get_num_threads(),
                                           "torch": torch.__version__, "layers": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
