"""Pixel decoding shared by the converters (writing shards), the reader (streaming them) and
jobs/segment_images.py (a user's own photos), so all read a 16-bit, palette, RGBA or 0/1-valued
file the same way.

Every user image is opened here, and only as one of a short list of formats (PHOTO_FORMATS;
the converters' source folders also SOURCE_FORMATS), whatever its bytes claim to be: PIL would
otherwise hand a `.jpg` holding PostScript to Ghostscript. An image of more than MAX_PIXELS is
refused from its header, before a pixel is decoded (a 200 KB PNG can claim 178 megapixels).
Both raise errors the callers' per-sample guards already count as an unreadable image, with a
message saying why."""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N", "I"}   # PIL's modes for 16-bit grey PNG/TIFF
ORIENTATION = 0x0112                # the EXIF tag; 1 = stored as displayed
SIDEWAYS = {5, 6, 7, 8}             # orientations that swap width and height (90 or 270 degrees)
PHOTO_FORMATS = ("JPEG", "PNG", "WEBP")   # shards and photos (MPO, a phone's JPEG, opens as JPEG)
# What the converters read from a source folder (converters.IMAGE_SUFFIXES): never EPS, PDF, ...
SOURCE_FORMATS = PHOTO_FORMATS + ("BMP", "TIFF", "PPM", "GIF")
MAX_PIXELS = 100_000_000            # width x height of the largest image opened: 100 MP, a large photo
# 16-bit grey -> 8 bits, rounded (value / 257, the exact inverse of 8 -> 16 bit): a table, not a
# float64 copy of the image
_TO_8BIT = ((np.arange(65536, dtype=np.uint32) + 128) // 257).astype(np.uint8)


def _format_names(formats: tuple[str, ...]) -> str:
    names = [{"WEBP": "WebP"}.get(f, f) for f in formats]
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]


def open_header(data: bytes, formats: tuple[str, ...] = PHOTO_FORMATS) -> Image.Image:
    """The image in `data`, its header read but no pixel decoded yet. UnidentifiedImageError when
    it is none of `formats`, PIL's DecompressionBombError when it has more than MAX_PIXELS pixels;
    both with a message that says so."""
    with warnings.catch_warnings():
        # PIL warns from 89 MP on; MAX_PIXELS decides here (PIL still refuses above twice its own)
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data), formats=list(formats))
        except UnidentifiedImageError:
            raise UnidentifiedImageError(f"not a {_format_names(formats)} file (it starts with "
                                         f"{bytes(data[:12])!r})") from None
    width, height = img.size
    if width * height > MAX_PIXELS:
        raise Image.DecompressionBombError(
            f"{width}x{height} pixels ({width * height / 1e6:.0f} MP) is more than the {MAX_PIXELS / 1e6:g} MP "
            f"an image may have (data_shards.images.MAX_PIXELS): a decompression bomb, or no photo")
    return img


def open_image(data: bytes, formats: tuple[str, ...] = PHOTO_FORMATS) -> Image.Image:
    img = open_header(data, formats)
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
    img = open_header(data)
    width, height = img.size
    if orientation(img) in SIDEWAYS:
        width, height = height, width
    if at_least:
        img.draft("RGB", (at_least, at_least))
    img.load()  # decode now: a truncated file fails here, inside the caller's per-photo guard
    return upright(img), (width, height)


def squashed_photo(data: bytes, side: int) -> tuple[np.ndarray, tuple[int, int]]:
    """(uint8 [side, side, 3] RGB, displayed (width, height)) of a photo file: upright, resized to a
    square, squashed rather than cropped so that every pixel of the photo is in it. A JPEG is
    decoded at a reduced scale when that still leaves twice `side` (PIL draft mode), so camera-size
    photos decode several times faster."""
    img, size = open_photo(data, at_least=2 * side)
    square = to_rgb8(img).resize((side, side), Image.BICUBIC)  # antialiased when reducing
    return np.asarray(square), size


def to_rgb8(img: Image.Image) -> Image.Image:
    """8-bit RGB of any PIL image: 16-bit grey is scaled (convert() would clip it to white),
    alpha is dropped, palettes are applied."""
    if img.mode in SIXTEEN_BIT:
        raw = np.asarray(img)
        if raw.dtype.itemsize > 2:  # mode I: 32-bit ints; 16-bit images stored in it stay in range
            raw = np.clip(raw, 0, 65535)
        return Image.fromarray(_TO_8BIT[raw]).convert("RGB")
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
