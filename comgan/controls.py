"""Controllable generation (the paper's Figs. 5-7): vary one of the codes f, b, z and hold the other
two fixed, and lay the results out as grids of composite / foreground / background / mask rows.

A grid has `groups` fixed settings (z, f, b), one group of four rows each, and one column per value
of the varied code: a foreground category (vary "f"), a background category (vary "b") or a fresh
noise vector (vary "z"). All codes come from one torch.Generator seeded with `seed` (never the
global random stream), drawn in a fixed order, so a seed gives the same codes whichever grid is
asked for, and the three grids of one seed share their fixed settings: group g of vary_f, vary_b
and vary_z starts from the same (z, f, b).

Since M depends on z only and B on (z, b), a vary-f grid has identical mask and background rows
across its columns, a vary-b grid identical mask and foreground rows: what a trained generator
changes along a row is what the varied code controls.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .config import ModelConfig
from .networks import Z_SCALE, Generator, GeneratorOutput, sample_codes
from .visualize import image_grid

VARIED = ("f", "b", "z")
ROWS = ("composite", "foreground", "background", "mask")
MIN_TILE = 64  # smaller images are enlarged (nearest neighbour) to at least this many pixels


def default_categories(cfg: ModelConfig, count: int) -> list[int]:
    """The categories shown when none are named: the first `count` (all of them if N <= count)."""
    return list(range(min(count, cfg.num_categories)))


def control_codes(cfg: ModelConfig, vary: str, groups: int, count: int, seed: int,
                  categories: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(z, f, b) for a grid, on the CPU, flattened group-major: entry g * columns + c is group g,
    column c. Columns are `categories` (default: `default_categories`) for vary "f"/"b" and `count`
    fresh z for vary "z"."""
    if vary not in VARIED:
        raise ValueError(f"vary must be one of {VARIED}, got {vary!r}")
    if groups < 1 or count < 1:
        raise ValueError(f"groups and count must be >= 1, got {groups} and {count}")
    n = cfg.num_categories
    categories = default_categories(cfg, count) if categories is None else list(categories)
    bad = [c for c in categories if not 0 <= c < n]
    if bad or not categories:
        raise ValueError(f"categories must be in 0..{n - 1} (model.num_categories is {n}), got {categories}")
    rng = torch.Generator().manual_seed(seed)
    z0, f0, b0, _, _ = sample_codes(groups, cfg, generator=rng)           # the fixed settings
    z_var = torch.randn(groups, count, cfg.z_dim, generator=rng) * Z_SCALE  # drawn whatever `vary` is
    cols = count if vary == "z" else len(categories)
    z, f, b = (t[:, None].expand(-1, cols, -1).clone() for t in (z0, f0, b0))
    if vary == "z":
        z = z_var
    else:
        varied = F.one_hot(torch.tensor(categories), n).float()[None].expand(groups, -1, -1)
        if vary == "f":
            f = varied.clone()
        else:
            b = varied.clone()
    return z.reshape(groups * cols, -1), f.reshape(groups * cols, n), b.reshape(groups * cols, n)


@torch.no_grad()
def generate(generator: Generator, z: torch.Tensor, f: torch.Tensor, b: torch.Tensor,
             chunk: int = 32) -> GeneratorOutput:
    """Run `generator` in eval mode (BatchNorm with its running statistics: each image depends on
    its own codes only) on the codes, `chunk` images at a time; the outputs come back on the CPU.
    The generator's train/eval mode is restored afterwards."""
    device = next(generator.parameters()).device
    was_training = generator.training
    generator.eval()
    parts = []
    try:
        for i in range(0, z.shape[0], max(1, chunk)):
            out = generator(*(t[i:i + chunk].to(device) for t in (z, f, b)))
            parts.append([t.float().cpu() for t in (out.image, out.mask, out.fg, out.bg, out.global_image)])
    finally:
        generator.train(was_training)
    return GeneratorOutput(*(torch.cat(ts) for ts in zip(*parts)))


def default_scale(resolution: int) -> int:
    return max(1, math.ceil(MIN_TILE / resolution))


def _unit(x: torch.Tensor, scale: int) -> torch.Tensor:
    """[-1, 1] images or (0, 1) masks -> [0, 1] RGB, enlarged `scale` times (nearest neighbour)."""
    x = x.float()
    x = x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else (x + 1) / 2
    if scale > 1:
        x = F.interpolate(x, scale_factor=scale, mode="nearest")
    return x.clamp(0, 1)


def grid_size(resolution: int, groups: int, columns: int, scale: int = 1, pad: int = 2,
              gap: int = 6) -> tuple[int, int]:
    """(H, W) of the grid `control_grid` lays out, known before any image is generated."""
    s = resolution * scale
    return groups * (len(ROWS) * (s + pad) + pad) + (groups - 1) * gap, columns * (s + pad) + pad


def control_grid(out: GeneratorOutput, groups: int, scale: int = 1, pad: int = 2, gap: int = 6) -> torch.Tensor:
    """A [3, H, W] grid in [0, 1]: per group the rows composite / foreground / background / mask,
    one column per image of the group; groups separated by `gap` more white pixels; its size is
    `grid_size`."""
    cols = out.image.shape[0] // groups
    rows = [_unit(t, scale) for t in (out.image, out.fg, out.bg, out.mask)]
    blocks = []
    for g in range(groups):
        block = image_grid([r[g * cols:(g + 1) * cols] for r in rows], pad=pad)
        if blocks and gap:
            blocks.append(torch.ones(3, gap, block.shape[2]))
        blocks.append(block)
    return torch.cat(blocks, dim=1)
