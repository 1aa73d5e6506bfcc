"""Segmenting images of any size with a segmenter trained at one square resolution."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .refine import colour_refined

# Images per forward pass in every no-grad pass of a run (export checks, BatchNorm re-estimation,
# watchdog, evaluation): bounds their memory whatever the sample counts.
INFERENCE_BATCH = 32


@torch.no_grad()
def predict(segmenter: torch.nn.Module, images: torch.Tensor, resolution: int, threshold: float,
            flip: bool = False, colour: bool = False) -> torch.Tensor:
    """Binary masks at the images' size from a segmenter trained at `resolution`."""
    return probabilities(segmenter, images, resolution, flip, colour) > threshold


@torch.no_grad()
def probabilities(segmenter: torch.nn.Module, images: torch.Tensor, resolution: int, flip: bool = False,
                  colour: bool = False) -> torch.Tensor:
    """Mask probabilities at the images' size: squashed to the segmenter's square, upsampled back.
    flip: the mean of the image's and its mirror image's masks (test-time augmentation).
    colour: then refined by each image's own colours at that size (comgan.refine)."""
    size = images.shape[-2:]
    squashed = images
    if tuple(size) != (resolution, resolution):
        squashed = F.interpolate(images, size=(resolution, resolution), mode="bilinear", antialias=True,
                                 align_corners=False)
    probs = mirror_averaged(segmenter, squashed) if flip else segmenter(squashed)
    if tuple(probs.shape[-2:]) != tuple(size):
        probs = F.interpolate(probs, size=size, mode="bilinear", align_corners=False)
    return colour_refined(images, probs) if colour else probs


def mirror_averaged(segmenter: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The mean of the masks of the images and of their mirror images (mirrored back): twice the
    compute, and on the horses 0.005-0.02 strict IoU more (benchmarks/results/README.md); the
    segmenter trains on flipped photos, so the two views are equally likely inputs. Both views go
    through one batch, so the segmenter must be in eval mode (BatchNorm on running statistics)."""
    both = segmenter(torch.cat([images, images.flip(-1)]))
    plain, mirrored = both.chunk(2)
    return (plain + mirrored.flip(-1)) / 2


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
