"""Differentiable augmentation of discriminator inputs (DiffAugment, Zhao et al., NeurIPS 2020).

A discriminator trained on a few hundred photos memorises them within minutes; its verdicts then
stop carrying information the generator can use. DiffAugment shows D every image, real and fake
alike, through random colour, translation and cutout, all differentiable, so the generator still
receives gradients through the augmented fakes and D cannot memorise pixels. Policies are comma
lists of "color", "translation", "cutout" ("" = off).

Each image draws its own transform from torch's global random stream (the training stream that
checkpoints save, so exact resume still holds). Several aligned batches passed in one call (an
image and its mask) get the same transform.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

POLICIES = ("color", "translation", "cutout")
TRANSLATION_RATIO = 0.125   # shift by up to 1/8 of the side, as in the paper
CUTOUT_RATIO = 0.5          # erase one square of half the side


def parse_policy(text: str) -> tuple[str, ...]:
    """'color,translation' -> ('color', 'translation'); raises ValueError naming unknown parts."""
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = [p for p in parts if p not in POLICIES]
    if unknown:
        raise ValueError(f"unknown augmentation {', '.join(unknown)}: use a comma list of {', '.join(POLICIES)}")
    return parts


def diff_augment(*batches: torch.Tensor, policy: tuple[str, ...] | str) -> tuple[torch.Tensor, ...] | torch.Tensor:
    """Apply one random transform per image to each of `batches` ([B, C, H, W], same B, H, W)."""
    policy = parse_policy(policy) if isinstance(policy, str) else policy
    out = list(batches)
    if not policy:
        return out[0] if len(out) == 1 else tuple(out)
    ref = out[0]
    n, device = ref.shape[0], ref.device
    if "color" in policy:  # colour acts on 3-channel images only; masks pass unchanged
        params = color_params(n, device, ref.dtype)
        out = [color(x, *params) if x.shape[1] == 3 else x for x in out]
    if "translation" in policy:
        grid = translation_grid(n, ref.shape[2], ref.shape[3], device)
        out = [translate(x, grid) for x in out]
    if "cutout" in policy:
        keep = cutout_mask(n, ref.shape[2], ref.shape[3], device, ref.dtype)
        out = [x * keep for x in out]
    return out[0] if len(out) == 1 else tuple(out)


def color_params(n: int, device, dtype):
    brightness = torch.rand(n, 1, 1, 1, device=device, dtype=dtype) - 0.5
    saturation = torch.rand(n, 1, 1, 1, device=device, dtype=dtype) * 2
    contrast = torch.rand(n, 1, 1, 1, device=device, dtype=dtype) + 0.5
    return brightness, saturation, contrast


def color(x: torch.Tensor, brightness, saturation, contrast) -> torch.Tensor:
    x = x + brightness
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * saturation + mean
    mean = x.mean(dim=[1, 2, 3], keepdim=True)
    return (x - mean) * contrast + mean


def translation_grid(n: int, h: int, w: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image integer shifts, as gather indices into a zero-padded image."""
    sh, sw = int(h * TRANSLATION_RATIO + 0.5), int(w * TRANSLATION_RATIO + 0.5)
    dy = torch.randint(-sh, sh + 1, (n, 1, 1), device=device)
    dx = torch.randint(-sw, sw + 1, (n, 1, 1), device=device)
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    return (ys[None] + dy + 1).clamp(0, h + 1), (xs[None] + dx + 1).clamp(0, w + 1)


def translate(x: torch.Tensor, grid) -> torch.Tensor:
    """Shift each image by its offset, filling with zeros (what the padding holds)."""
    gy, gx = grid
    n, c = x.shape[:2]
    padded = F.pad(x, [1, 1, 1, 1])
    batch = torch.arange(n, device=x.device)[:, None, None]
    shifted = padded.permute(0, 2, 3, 1)[batch, gy, gx].permute(0, 3, 1, 2)  # NHWC memory
    # In the layout of the input: the networks run NCHW or channels_last (speed.Formulation), and a
    # conv given the other layout would reorder it on every call.
    layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    return shifted.contiguous(memory_format=layout)


def cutout_mask(n: int, h: int, w: int, device, dtype) -> torch.Tensor:
    """1 everywhere but one square of CUTOUT_RATIO of the side per image, centred anywhere (it may
    reach past the border and be clipped)."""
    ch, cw = int(h * CUTOUT_RATIO + 0.5), int(w * CUTOUT_RATIO + 0.5)
    top = torch.randint(0, h, (n, 1, 1), device=device) - ch // 2
    left = torch.randint(0, w, (n, 1, 1), device=device) - cw // 2
    ys = torch.arange(h, device=device)[None, :, None]
    xs = torch.arange(w, device=device)[None, None, :]
    inside = (ys >= top) & (ys < top + ch) & (xs >= left) & (xs < left + cw)
    return (~inside).to(dtype)[:, None]
