"""Image grids for TensorBoard and PNG reports (no torchvision needed)."""
from __future__ import annotations

import torch


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images -> [0, 1]; one-channel masks are repeated to RGB."""
    x = x.detach().float().cpu()
    if x.min() < 0:
        x = (x + 1) / 2
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    return x.clamp(0, 1)


def image_grid(rows: list[torch.Tensor], pad: int = 1) -> torch.Tensor:
    """Stack equally sized batches as rows of one [3, H, W] grid in [0, 1] (white padding)."""
    rows = [to_unit(r) for r in rows]
    n, _, h, w = rows[0].shape
    grid = torch.ones(3, len(rows) * (h + pad) + pad, n * (w + pad) + pad)
    for i, row in enumerate(rows):
        for j in range(n):
            top, left = pad + i * (h + pad), pad + j * (w + pad)
            grid[:, top:top + h, left:left + w] = row[j]
    return grid


def grid_to_uint8(grid: torch.Tensor):
    return (grid.permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype("uint8")
