"""Probe: is a nearest-upsampled 3x3 conv faster computed as one 2x2 conv per output phase?

Every upBlock of the generator (and each decoder level of the U-Net) is nearest upsampling by s
followed by a zero-padded 3x3 conv. Each of the s*s output phases only ever reads a 2x2 window of
the small input, so the same values come from one 2x2 conv over the small input with s*s times
the output channels (taps summed into 2x2 kernels), then interleaving the phases: 2.25x fewer
multiplications at any s, exact up to rounding (checked below in float64). This times both
formulations, forward + backward, in NCHW and channels_last, at the default's and the paper's
upBlock shapes.

    python benchmarks/subpixel_probe.py

Measured 2026-12-02 (2-core AMD EPYC, torch 2.13 CPU, beside a training run): in channels_last,
the layout the speed defaults use, the phase formulation is 0.5-1.0x the direct one at every
shape (the 2x2 conv runs far below the 3x3 conv's rate and the interleave is a full copy); in
NCHW 0.7-1.9x, never above channels_last's direct conv. Not adopted.
"""
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def phase_rows(scale: int, dtype) -> torch.Tensor:
    """R[a, r, t] = 1 where tap t (offset t - 1) of output phase a reads row r of its 2x2 window;
    phase 0's window starts one row above its source pixel, every other phase's at it."""
    R = torch.zeros(scale, 2, 3, dtype=dtype)
    for a in range(scale):
        start = -1 if a == 0 else 0
        for t in range(3):
            R[a, (a + t - 1) // scale - start, t] = 1
    return R


def upsampled_conv(conv: nn.Conv2d, x: torch.Tensor, scale: int) -> torch.Tensor:
    """conv(nearest_upsample(x, scale)) for a 3x3, stride-1, zero-padded conv."""
    co, ci = conv.weight.shape[:2]
    R = phase_rows(scale, x.dtype)
    k = torch.einsum("art,oitu,bsu->aboirs", R, conv.weight, R).reshape(scale * scale * co, ci, 2, 2)
    bias = conv.bias.repeat(scale * scale) if conv.bias is not None else None
    B, H, W = x.shape[0], x.shape[2], x.shape[3]
    y = F.conv2d(F.pad(x, [1, 1, 1, 1]), k, bias).view(B, scale, scale, co, H + 1, W + 1)
    y = torch.cat([y[:, :1, :, :, :H], y[:, 1:, :, :, 1:]], dim=1)
    y = torch.cat([y[:, :, :1, :, :, :W], y[:, :, 1:, :, :, 1:]], dim=2)  # B, s, s, co, H, W
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return y.permute(0, 4, 1, 5, 2, 3).reshape(B, H * scale, W * scale, co).permute(0, 3, 1, 2)
    return y.permute(0, 3, 4, 1, 5, 2).reshape(B, co, H * scale, W * scale)


def check_exact() -> None:
    torch.manual_seed(0)
    for scale in (2, 4):
        conv = nn.Conv2d(5, 6, 3, 1, 1).double()
        x = torch.randn(2, 5, 7, 4, dtype=torch.float64, requires_grad=True)
        direct = conv(F.interpolate(x, scale_factor=scale, mode="nearest"))
        phases = upsampled_conv(conv, x, scale)
        g = torch.randn_like(direct)
        grads = [torch.autograd.grad(y, [x, conv.weight], g) for y in (direct, phases)]
        err = max([(direct - phases).abs().max().item()] + [(a - b).abs().max().item() for a, b in zip(*grads)])
        print(f"scale {scale}: max float64 difference (values and gradients) {err:.1e}")


def time_ms(fn, n: int = 5) -> float:
    fn().sum().backward()
    t = time.perf_counter()
    for _ in range(n):
        fn().sum().backward()
    return (time.perf_counter() - t) / n * 1000


def main() -> None:
    check_exact()
    # (in channels, out channels, input side, scale, batch): default upBlocks / a1 at batch 32,
    # the paper's a1 and last upBlock at batch 8
    shapes = [(128, 128, 4, 2, 32), (64, 64, 8, 2, 32), (32, 32, 16, 2, 32), (64, 64, 8, 4, 32),
              (128, 64, 32, 4, 8), (64, 64, 64, 2, 8)]
    for c_in, c_out, side, scale, batch in shapes:
        for layout, name in ((torch.contiguous_format, "NCHW"), (torch.channels_last, "channels_last")):
            conv = nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False).to(memory_format=layout)
            x = torch.randn(batch, c_in, side, side).contiguous(memory_format=layout).requires_grad_()
            direct = time_ms(lambda: conv(F.interpolate(x, scale_factor=scale, mode="nearest")))
            phases = time_ms(lambda: upsampled_conv(conv, x, scale))
            print(f"{c_in}->{c_out} at {side}px x{scale}, batch {batch}, {name}: direct {direct:.1f} ms, "
                  f"phases {phases:.1f} ms ({direct / phases:.2f}x)")


if __name__ == "__main__":
    main()
