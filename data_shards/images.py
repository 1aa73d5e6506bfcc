"""Pixel decoding shared by the converters (writing shards), the reader (streaming them) and
jobs/segment_images.py (a user's own photos), so all read a 16-bit, palette, RGBA or 0/1-valued
file the same way."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N", "I"}   # PIL's modes for 16-bit grey PNG/TIFF
ORIENTATION = 0x0112                # the EXIF tag; 1 = stored as displayed
SIDEWAYS = {5, 6, 7, 8}             # orientations that swap width and height (90 or 270 degrees)


def open_image(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()  # decode now: a truncated file fails here, inside the caller's per-sample guard
    return img


def orientation(img: Image.Image) -> int:
    """The EXIF orientation (1..8) of an image; 1 (as stored) without a tag or with damaged EXIF."""
    try:
        value = img.getexif().get(ORIENTATION, 1)
    except Exception:  # noqa: BLE001 -- damaged EXIF must not cost a photo that decodes
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def upright(img: Image.Image) -> Image.Image:
    """The image as viewers show it: its EXIF orientation applied (cameras and phones often store
    a portrait photo sideways with a tag saying so). Untagged images are returned as they are."""
    if orientation(img) == 1:
        return img
    return ImageOps.exif_transpose(img)


def open_photo(data: bytes, at_least: int | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """(upright image, its displayed (width, height)) of a photo file. With `at_least`, a JPEG is
    decoded at a reduced scale (1/2 to 1/8, several times faster) that keeps both sides at least
    that many pixels: enough for a small network input, while the size returned is the full one."""
    img = Image.open(io.BytesIO(data))
    width, height = img.size
    if orientation(img) in SIDEWAYS:
        width, height = height, width
    if at_least:
        img.draft("RGB", (at_least, at_least))
    img.load()  # decode now: a truncated file fails here, inside the caller's per-photo guard
    return upright(img), (width, height)


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
