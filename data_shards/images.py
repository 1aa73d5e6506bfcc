"""Pixel decoding shared by the converters (writing shards) and the reader (streaming them), so
both read a 16-bit, palette, RGBA or 0/1-valued file the same way."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N", "I"}   # PIL's modes for 16-bit grey PNG/TIFF


def open_image(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()  # decode now: a truncated file fails here, inside the caller's per-sample guard
    return img


def to_rgb8(img: Image.Image) -> Image.Image:
    """8-bit RGB of any PIL image: 16-bit grey is scaled (convert() would clip it to white),
    alpha is dropped, palettes are applied."""
    if img.mode in SIXTEEN_BIT:
        grey = np.clip(np.asarray(img, dtype=np.float64) / 257 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if img.mode == "F":
        return Image.fromarray(np.clip(np.asarray(img) + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    return img.convert("RGB")


def mask_grey(img: Image.Image) -> Image.Image:
    """A mask as mode-L 0..255 (foreground: above 127). Masks stored as 0/1 values, in 8 or 16
    bits, are stretched to 0/255 rather than read as all background."""
    if img.mode in SIXTEEN_BIT or img.mode == "F":
        raw = np.asarray(img)
        grey = Image.fromarray((raw > 0).astype(np.uint8) * 255) if raw.max(initial=0) <= 1 \
            else to_rgb8(img).convert("L")
    else:
        grey = img.convert("L")
    if np.asarray(grey).max(initial=0) == 1:
        grey = Image.fromarray(np.asarray(grey) * np.uint8(255))
    return grey
