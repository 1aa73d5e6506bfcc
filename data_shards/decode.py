"""A shard sample -> what the networks get. A sample is the dict a tar holds for one key
({"__key__", "__url__", "jpg": bytes, ...}); its image is the first of IMAGE_KEYS it has (our
writer's image.png/jpg/jpeg/webp, or jpg, jpeg, png, webp as img2dataset and TarWriter scripts
store it), its mask the first of MASK_KEYS; other fields (json, txt, ...) are ignored. Pixels are
decoded by images.py (any mode to 8-bit RGB, any mask to 0/255), centre-cropped to square and
resized to the requested size. A sample that cannot be used is counted (problems.py) and comes
back as None, so the readers skip it; a mask of another size than its image is resized to it.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from data_shards.images import mask_grey, open_image, to_rgb8
from data_shards.index import IMAGE_KEYS, MASK_KEYS
from data_shards.problems import ProblemLog, UnusableStreak, unusable, where

Size = tuple[int, int] | None   # target (H, W); None keeps the stored size


def _first(sample: dict, keys: tuple[str, ...]) -> bytes | None:
    return next((sample[k] for k in keys if k in sample), None)


def fit(img: Image.Image, size: Size, resample) -> Image.Image:
    """Centre-crop to square and resize when the stored image is not already `size` (H, W)."""
    if size is None or img.size == (size[1], size[0]):
        return img
    w, h = img.size
    if size[0] == size[1] and w != h:  # a square target from a non-square image: crop, don't squash
        s = min(w, h)
        img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    return img.resize((size[1], size[0]), resample)


def decode_image(data: bytes, size: Size) -> np.ndarray:
    """RGB uint8 [H, W, 3] from image bytes: grey, palette, RGBA (alpha dropped), 16-bit."""
    return np.asarray(fit(to_rgb8(open_image(data)), size, Image.BICUBIC))


def train_image(sample: dict, size: Size, problems: ProblemLog, streak: UnusableStreak) -> np.ndarray | None:
    """The training image of a sample at `size`, or None (counted) when it has none that decodes."""
    data = _first(sample, IMAGE_KEYS)
    if data is None:
        return unusable("missing_image", sample, problems, streak,
                        f"has only {sorted(k for k in sample if k[:2] != '__')}")
    try:
        image = decode_image(data, size)
    except Exception as e:  # PIL raises many types for damaged files; any of them skips the sample
        return unusable("undecodable_image", sample, problems, streak, e)
    streak.good()
    return image


def eval_pair(sample: dict, size: Size, problems: ProblemLog,
              streak: UnusableStreak) -> tuple[np.ndarray, np.ndarray] | None:
    """(image, bool mask) of one evaluation sample at `size`, or None (counted) when it is
    unusable. A mask stored at another size than its image is resized to the image first (counted)."""
    data = _first(sample, IMAGE_KEYS)
    if data is None:
        return unusable("missing_image", sample, problems, streak)
    mask_data = _first(sample, MASK_KEYS)
    if mask_data is None:
        return unusable("missing_mask", sample, problems, streak)
    try:
        image = to_rgb8(open_image(data))
    except Exception as e:
        return unusable("undecodable_image", sample, problems, streak, e)
    try:
        mask = mask_grey(open_image(mask_data))
    except Exception as e:
        return unusable("undecodable_mask", sample, problems, streak, e)
    streak.good()
    if mask.size != image.size:
        problems.add("mask_resized", where(sample), f"mask {mask.size} vs image {image.size} (W, H)")
        mask = mask.resize(image.size, Image.BILINEAR)
    return (np.asarray(fit(image, size, Image.BICUBIC)),
            np.asarray(fit(mask, size, Image.BILINEAR)) >= 128)


def images_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float [B, 3, H, W] in [-1, 1]."""
    # numpy, not torch ops: torch's intra-op threads cost more than they save on tensors this small
    x = np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2), dtype=np.float32)
    x *= 1 / 127.5
    x -= 1
    return torch.from_numpy(x)


def masks_tensor(masks: list[np.ndarray]) -> torch.Tensor:
    """bool [B, H, W] -> float [B, 1, H, W] in {0, 1}."""
    return torch.from_numpy(np.stack(masks)[:, None]).float()
