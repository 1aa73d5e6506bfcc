"""How a step is computed, never what: the speed switches of `SpeedConfig` (comgan/config.py).

Every switch keeps the mathematics: tests/comgan/test_speed.py compares the losses and gradients
of a step with all of them on against the plain formulation (all off: the authors' way, tiled code
channels, sliced GLU, NCHW tensors) on the same weights and inputs. benchmarks/speed.py measures what each
one buys; the figures are in benchmarks/results/speed_*.json and the README there.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .config import SpeedConfig
from .networks import GLU, Conv3x3, Subnet

TORCH_DEFAULT_CUDNN_TF32 = torch.backends.cudnn.allow_tf32  # True: PyTorch lets cuDNN convs use TF32


def memory_format(speed: SpeedConfig) -> torch.memory_format:
    return torch.channels_last if speed.channels_last else torch.contiguous_format


def prepare_networks(modules, speed: SpeedConfig) -> None:
    """Set each network's layout and code path in place. Parameters keep their names and values,
    so checkpoints and artifacts load into networks of either layout (torch.save keeps strides, so
    the files' bytes differ)."""
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


def adam(params, stage_cfg, speed: SpeedConfig) -> torch.optim.Adam:
    """Adam with one fused kernel over all parameters where the switch asks for it (CPU and CUDA
    both have one): the same update as the per-parameter loop, up to rounding."""
    return torch.optim.Adam(params, lr=stage_cfg.lr, betas=ADAM_BETAS,
                            fused=True if speed.fused_optimizer else None)


# Param-group entries that say how Adam computes, never what: a saved state keeps the writer's.
HOW_OPTIMIZERS_COMPUTE = ("fused", "foreach")


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """optimizer.load_state_dict(saved), keeping this run's speed switches: PyTorch takes every
    param-group entry from the saved state, so a checkpoint written with fused_optimizer off would
    turn the fused kernel off for the rest of a resumed run."""
    how = [{k: group[k] for k in HOW_OPTIMIZERS_COMPUTE if k in group} for group in optimizer.param_groups]
    optimizer.load_state_dict(saved)
    for group, kept in zip(optimizer.param_groups, how):
        group.update(kept)
    match_optimizer_layouts(optimizer)


def match_optimizer_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give every per-parameter state tensor (Adam's moments) its parameter's strides. A state
    saved from networks of another layout (a checkpoint written with channels_last off) pairs NHWC
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


def set_backend_flags(speed: SpeedConfig) -> None:
    """Process-wide GPU switches (no effect on CPU). TF32 rounds products to 10 mantissa bits:
    PyTorch's default allows it in cuDNN convolutions but not in matmuls, which `tf32` adds.
    cuDNN autotuning may pick other algorithms after a restart, so a resumed GPU run is not bit
    for bit the uninterrupted one with it on (CPU runs are)."""
    torch.backends.cuda.matmul.allow_tf32 = speed.tf32
    torch.backends.cudnn.allow_tf32 = True if speed.tf32 else TORCH_DEFAULT_CUDNN_TF32
    torch.backends.cudnn.benchmark = speed.cudnn_benchmark

