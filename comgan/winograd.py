"""3x3 convolutions by Winograd F(4x4, 3x3) on the CPU (SpeedConfig.winograd): the same
convolution with 4x fewer multiplications, for the wide full-resolution layers that bound the
paper preset's step.

The tile transforms are a small native kernel (csrc/winograd.cpp) built on first use with the
machine's compiler through torch.utils.cpp_extension (20-30 s, once per machine and torch version;
cached under ~/.cache/ds-comgan). Where it cannot be built (no compiler, no OpenMP) the
switch warns once and every convolution runs as the direct one. The 36 GEMMs per tile block are
torch.bmm, so the heavy arithmetic stays in oneDNN/MKL.

Same mathematics, other rounding: the transforms are exact in real arithmetic and the backward
pass is their exact transpose (dw = G^T (sum V^T dM) G); in fp32 the outputs differ from the
direct convolution by about 1e-5 relative (1e-6 for oneDNN's direct kernel), in float64 by under
1e-12 (tests/comgan/test_winograd.py).
Layers with few channels run the direct kernel: there the transforms cost more than the GEMMs save
(benchmarks/winograd_probe.py times each shape).
"""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

SOURCE = Path(__file__).resolve().parent / "csrc" / "winograd.cpp"
# Below these widths and sizes the direct kernel wins on the 2-core CPU of benchmarks/results
# (forward + backward, Winograd against direct: 128 -> 32 at 128 px 0.86x, 512 -> 512 at 16 px
# 0.63x; 64 -> 64 at 128 px 1.15x, 64 -> 256 1.78x, 128 -> 256 2.02x; winograd_layers_*.json).
MIN_IN_CHANNELS = 64
MIN_OUT_CHANNELS = 64
MIN_PIXELS = 32 * 32
TILE_BLOCK = 256  # tiles per block: the block's transformed tiles (36 x 256 x C floats) stay in L2/L3

# F(4x4, 3x3) weight transform G (6x3); the input and output transforms live in csrc/winograd.cpp.
_G = ((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6),
      (1 / 24, 1 / 12, 1 / 6), (1 / 24, -1 / 12, 1 / 6), (0, 0, 1))

_extension = None
_unavailable: str | None = None


def _build_directory() -> Path:
    """One build per machine type, torch version and kernel source: the kernel is compiled for this
    CPU (-march=native), so a home directory shared by different nodes must not share it, and two
    checkouts with different sources must not rebuild over each other."""
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        pass
    source = hashlib.sha1(SOURCE.read_bytes()).hexdigest() if SOURCE.exists() else ""
    tag = hashlib.sha1(f"{platform.machine()} {flags} {torch.__version__} {source}".encode()).hexdigest()[:12]
    root = Path(os.environ.get("COMGAN_EXTENSIONS_DIR", Path.home() / ".cache" / "ds-comgan" / "extensions"))
    return root / f"winograd-{tag}"


def _put_ninja_on_path() -> None:
    """torch.utils.cpp_extension runs `ninja` from PATH; the pip package's copy sits in the venv's
    bin folder, which is not on PATH when .venv/bin/python is run without activating the venv."""
    if shutil.which("ninja") is None:
        try:
            import ninja

            os.environ["PATH"] = f"{ninja.BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}"
        except ImportError:
            pass


STALE_LOCK_S = 600


def _remove_stale_lock(lock: Path) -> None:
    """torch.utils.cpp_extension lets one process build while the others wait on a lock file, and
    they wait forever if the builder was killed. A build takes 20-30 s; a lock ten minutes old
    was left by a process that died (a worker killed mid-build), so it is removed."""
    try:
        if time.time() - lock.stat().st_mtime > STALE_LOCK_S:
            lock.unlink()
    except FileNotFoundError:
        pass


def extension():
    """The compiled kernel, or None (with one warning) where it cannot be built."""
    global _extension, _unavailable
    if _extension is not None or _unavailable is not None:
        return _extension
    try:
        from torch.utils.cpp_extension import load

        _put_ninja_on_path()
        build = _build_directory()
        build.mkdir(parents=True, exist_ok=True)
        _remove_stale_lock(build / "lock")
        if not any(build.glob("comgan_winograd*.so")):
            print("speed.winograd: building the native Winograd kernel for this machine (once, 20-30 s)",
                  file=sys.stderr, flush=True)
        _extension = load("comgan_winograd", [str(SOURCE)], build_directory=str(build),
                          extra_cflags=["-O3", "-march=native", "-fopenmp"], extra_ldflags=["-fopenmp"])
    except Exception as e:  # no compiler, no OpenMP, a read-only home: the direct kernel still works
        _unavailable = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
        warnings.warn(f"speed.winograd: the native Winograd kernel could not be built ({_unavailable}); 3x3 "
                      f"convolutions run as direct convolutions (same results, slower). Set "
                      f"speed.winograd=false to silence this.", RuntimeWarning, stacklevel=2)
    return _extension


def applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether this convolution (3x3 weight, stride 1, zero padding 1, no groups) runs as Winograd:
    a CPU float tensor in channels_last layout, wide enough to pay, and the kernel built."""
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and weight.dtype == x.dtype
            and x.dim() == 4 and weight.shape[2:] == (3, 3)
            and weight.shape[1] >= MIN_IN_CHANNELS and weight.shape[0] >= MIN_OUT_CHANNELS
            and x.shape[2] * x.shape[3] >= MIN_PIXELS
            and x.is_contiguous(memory_format=torch.channels_last)
            and not torch.is_autocast_enabled("cpu")
            and not torch.compiler.is_compiling()  # under torch.compile the direct conv: no graph break
            and extension() is not None)


def conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.conv2d(x, weight, bias, stride=1, padding=1), by Winograd where `applies` (the output is
    then channels_last, as the input), else directly."""
    if not applies(x, weight):
        return F.conv2d(x, weight, bias, 1, 1)
    y = _WinogradConv3x3.apply(x, weight)
    return y if bias is None else y + bias.view(1, -1, 1, 1)


def _transform_matrix(like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(_G, dtype=like.dtype, device=like.device)


class _WinogradConv3x3(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight):
        x_nhwc = x.permute(0, 2, 3, 1)  # a view: x is channels_last
        g = _transform_matrix(weight)
        transformed = torch.einsum("ai,kcij,bj->abck", g, weight, g).reshape(36, x.shape[1], -1).contiguous()
        y = extension().forward(x_nhwc, transformed, TILE_BLOCK)
        ctx.save_for_backward(x_nhwc, transformed)
        return y.permute(0, 3, 1, 2)

    @staticmethod
    @once_differentiable  # the kernel's backward is not itself differentiable: refuse double backward
    def backward(ctx, grad_y):
        x_nhwc, transformed = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad
        grad_nhwc = grad_y.permute(0, 2, 3, 1).contiguous()  # a view when grad_y is channels_last
        grad_x, grad_u = extension().backward(x_nhwc, transformed, grad_nhwc, need_x, need_w, TILE_BLOCK)
        grad_w = None
        if need_w:
            g = _transform_matrix(grad_u)
            grad_w = torch.einsum("ai,abck,bj->kcij", g, grad_u.view(6, 6, *grad_u.shape[1:]), g)
            grad_w = grad_w.contiguous(memory_format=torch.channels_last)
        return (grad_x.permute(0, 3, 1, 2) if need_x else None), grad_w
