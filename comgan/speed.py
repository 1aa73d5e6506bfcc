"""How a step is computed, never what: the `Formulation` a step runs with.

Training always runs the fast formulation: the switches below that keep the mathematics are on,
and a config's `speed` section (comgan/config.py SpeedConfig) adds the opt-in ones (winograd,
compile). `Formulation.plain()`, every switch off (the authors' way: tiled code channels, sliced
GLU, NCHW tensors, Adam's per-parameter loop), is kept only as the reference:
tests/comgan/test_speed.py compares the losses and gradients of a step against it on the same
weights and inputs, and benchmarks/speed.py measures what each switch buys (figures in
benchmarks/results/speed_*.json and the README there).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from .config import SpeedConfig
from .networks import GLU, Conv3x3, Subnet

TORCH_DEFAULT_CUDNN_TF32 = torch.backends.cudnn.allow_tf32  # True: PyTorch lets cuDNN convs use TF32
CUDNN_BENCHMARK = True  # GPU: cuDNN times its algorithms once per input shape (fixed in training) and keeps the fastest


@dataclass
class Formulation(SpeedConfig):
    """A config's speed section plus the switches that are always on in training. Not config keys:
    each computes what its off path does (up to rounding), so only the equivalence tests and
    benchmarks/speed.py turn them off."""
    channels_last: bool = True    # NHWC tensors for every convolution: oneDNN's and cuDNN's preferred layout
    # F's and B's first conv takes the one-hot code as a per-sample bias (plus the zero padding's
    # border corrections) instead of N tiled input channels: at N = 200 that is 3/4 of the conv.
    code_as_bias: bool = True
    fused_glu: bool = True        # GLU by F.glu / chunk instead of two slices (networks.GLU)
    fused_optimizer: bool = True  # Adam as one fused kernel (CPU and CUDA)

    @classmethod
    def plain(cls) -> "Formulation":
        """Every switch off: the reference formulation."""
        return cls(channels_last=False, code_as_bias=False, fused_glu=False, fused_optimizer=False)


def formulation(speed: SpeedConfig) -> Formulation:
    """What a step runs with: a config's speed section gets every always-on switch; a Formulation
    (the tests' and benchmarks' reference or variants) is taken as it is."""
    return speed if isinstance(speed, Formulation) else Formulation(**asdict(speed))


def memory_format(speed: SpeedConfig) -> torch.memory_format:
    return torch.channels_last if formulation(speed).channels_last else torch.contiguous_format


def prepare_networks(modules, speed: SpeedConfig) -> None:
    """Set each network's layout and code path in place. Parameters keep their names and values,
    so checkpoints and artifacts load into networks of either layout (torch.save keeps strides, so
    the files' bytes differ)."""
    speed = formulation(speed)
    for module in modules:
        # channels_last: oneDNN and cuDNN's preferred layout for 3x3 convs. On the 2-core CPU of
        # benchmarks/results it pays only together with fused_glu (stage 1: 0.85x alone).
        module.to(memory_format=memory_format(speed))
        for sub in module.modules():
            if isinstance(sub, Subnet):
                sub.code_as_bias = speed.code_as_bias
            if isinstance(sub, GLU):
                sub.fused = speed.fused_glu
            if isinstance(sub, Conv3x3):
                sub.winograd = speed.winograd


def as_input(x: torch.Tensor, speed: SpeedConfig) -> torch.Tensor:
    """A batch in the networks' layout (a 3-channel image batch is cheap to reorder)."""
    return x.contiguous(memory_format=memory_format(speed))


ADAM_BETAS = (0.5, 0.999)  # the paper's (beta1, beta2), for every optimiser of both stages


def adam(params, stage_cfg, speed: SpeedConfig, betas=ADAM_BETAS) -> torch.optim.Adam:
    """Adam at the stage's learning rate (parameter groups may set their own) with one fused kernel
    over all parameters where the switch asks for it (CPU and CUDA both have one): the same update
    as the per-parameter loop, up to rounding."""
    return torch.optim.Adam(params, lr=stage_cfg.lr, betas=betas,
                            fused=True if formulation(speed).fused_optimizer else None)


# Param-group entries that say how Adam computes, never what: a saved state keeps the writer's.
HOW_OPTIMIZERS_COMPUTE = ("fused", "foreach")


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """optimizer.load_state_dict(saved), keeping this run's speed switches: PyTorch takes every
    param-group entry from the saved state, so a checkpoint written with the fused kernel off (by the
    plain formulation, or an older version that could turn it off) would turn it off for the rest
    of a resumed run."""
    how = [{k: group[k] for k in HOW_OPTIMIZERS_COMPUTE if k in group} for group in optimizer.param_groups]
    optimizer.load_state_dict(saved)
    for group, kept in zip(optimizer.param_groups, how):
        group.update(kept)
    match_optimizer_layouts(optimizer)


def match_optimizer_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give every per-parameter state tensor (Adam's moments) its parameter's strides. A state
    saved from networks of another layout (NCHW: the plain formulation, or an older run) pairs NHWC
    parameters with NCHW moments: PyTorch's Adam still pairs the right entries (tested), but
    every update then walks the two tensors in different orders."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                    state[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


def compile_networks(modules: dict[str, nn.Module], speed: SpeedConfig) -> None:
    """torch.compile each network in place (nn.Module.compile keeps parameter names, so
    state_dict() and checkpoints do not change)."""
    if speed.compile:
        for module in modules.values():
            module.compile()


def set_backend_flags() -> None:
    """Process-wide GPU settings (no effect on CPU). TF32 (products rounded to 10 mantissa bits)
    stays PyTorch's default, set again here whatever ran before: allowed in cuDNN convolutions, not
    in matmuls. cuDNN autotuning may pick other algorithms after a restart, so a resumed GPU run is
    not bit for bit the uninterrupted one (CPU runs are)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = TORCH_DEFAULT_CUDNN_TF32
    torch.backends.cudnn.benchmark = CUDNN_BENCHMARK

