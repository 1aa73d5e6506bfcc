"""Segmenting images of any size with a segmenter trained at one square resolution."""
from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def predict(segmenter: torch.nn.Module, images: torch.Tensor, resolution: int, threshold: float) -> torch.Tensor:
    """Binary masks at the images' size from a segmenter trained at `resolution`."""
    return probabilities(segmenter, images, resolution) > threshold


@torch.no_grad()
def probabilities(segmenter: torch.nn.Module, images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Mask probabilities at the images' size: squashed to the segmenter's square, upsampled back."""
    size = images.shape[-2:]
    if tuple(size) != (resolution, resolution):
        images = F.interpolate(images, size=(resolution, resolution), mode="bilinear", antialias=True,
                               align_corners=False)
    probs = segmenter(images)
    if tuple(probs.shape[-2:]) != tuple(size):
        probs = F.interpolate(probs, size=size, mode="bilinear", align_corners=False)
    return probs


def resolve_device(name: str) -> torch.device:
    """"auto" (CUDA when there is one) or any torch device name; ValueError for a bad or absent one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device: not a torch device: {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device is available here")
    return device
