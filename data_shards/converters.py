"""Dataset converters: image collections on disk (or any fsspec URL) -> writer-ready samples.

    folder_source    a folder of images (recursive), optionally a folder of masks matched by stem
    images_source    the same without masks (Stanford Cars/Dogs, CLEVR-style scenes)
    cub_source       CUB-200-2011: images.txt, bounding_boxes.txt, train_test_split.txt, segmentations/
    flowers_source   Oxford 102 Flowers: jpg/image_NNNNN.jpg, segmim/segmim_NNNNN.jpg (blue background)

Each returns a `Source`: an iterable of samples for writer.write_shards that decodes lazily, in
a few threads, in a fixed order. What it stores, and why:

- Image bytes pass through unchanged when no pixel has to change (a JPEG stays a JPEG, bit for
  bit: re-encoding would only lose quality). Cropping or resizing re-encodes JPEG sources as JPEG
  quality 95 and everything else as PNG. Modes the reader's convert("RGB") would get wrong
  (16-bit grey) are converted to 8-bit RGB first.
- Masks are always single-channel PNG in {0, 255}, at the stored image's size: grey > 127, except
  that a mask whose maximum is 1 (a 0/1 label image) counts every nonzero pixel as foreground.
- A file that cannot be decoded is left out, counted by reason in `Source.skipped`, and the run
  goes on: one bad file in 10^5 should not cost a rerun. A mask that is unreadable or has another
  size than its image drops the whole sample (a set meant for evaluation needs every mask); an
  image that simply has no mask is written without one.
- Items are shuffled with a fixed seed by default: the reader mixes only ~500 neighbouring
  samples, and CUB or Flowers listed in source order would give batches of one or two classes.

Pure data code: PIL and numpy only; every file is read through io.py, so a source may be a local
folder or a URL such as s3://bucket/cub.
"""
from __future__ import annotations

import io
import itertools
import os
import struct
import sys
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Iterable, Iterator

import numpy as np
from PIL import Image

from comgan.errors import UserError  # the one import from comgan/ (docs/DESIGN.md, section 2)
from data_shards.images import SOURCE_FORMATS, mask_grey, open_image, to_rgb8
from data_shards.io import filesystem, join_url, read_bytes, redact
from data_shards.progress import Progress

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".gif")
# ... opened only as images.SOURCE_FORMATS, whatever a file's bytes claim (no EPS, PDF, ...)
# stored as they are: the reader decodes them (MPO: a camera JPEG with extra frames PIL ignores)
PASS_FORMATS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp"}
PASS_MODES = {"RGB", "RGBA", "L", "LA", "P", "1"}             # ... and converts these to RGB correctly
JPEG_QUALITY = 95
# Flowers' segmim paints the background (0, 0, 254) and is a JPEG: flat areas stay within ~20
# levels, but next to a petal chroma subsampling drags the blue down to ~130 (a yellow petal
# bleeds ~2 px). So a pixel is background when blue > 120 while red and green stay < 60; real
# blue petals keep some red or green (violet, cornflower, sky blue: r or g >= 60) and stay
# foreground. Only deep, saturated blue (r, g < 60) would be lost, which flowers rarely are.
BLUE_MIN, RED_GREEN_MAX = 120, 60
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError)


class ConversionError(UserError):
    """A source that does not fit the chosen converter; the message is one line for the user."""


@dataclass
class Item:
    """One sample before decoding: where its files are and what is known about it."""
    key: str
    image: str                      # URL of the image file
    rel: str                        # its path inside the source, recorded in the sample's meta
    mask: str | None = None         # URL of the mask file, if there is one
    mask_rule: str = "grey"         # "grey": > 127 (0/1 masks: > 0); "blue": Flowers' segmim
    bbox: tuple | None = None       # (x, y, w, h) object box, used by crop_bbox
    meta: dict = field(default_factory=dict)


@dataclass
class Skip:
    """An item left out, and why."""
    rel: str
    reason: str
    detail: str = ""


# ---------------------------------------------------------------------------------------------
# keys and listing

def key_for(rel: str) -> str:
    """Sample key from a relative path: no extension, "/" -> "__", "." -> "_". webdataset splits a
    file name at its first ".", and "/" would make a folder inside the tar."""
    stem = os.path.splitext(rel)[0].replace("\\", "/").strip("/")
    return stem.replace("/", "__").replace(".", "_")


def _stem(rel: str) -> str:
    return os.path.splitext(rel)[0]


def list_files(root: str, what: str = "folder") -> list[str]:
    """Sorted relative paths of all files under `root` (recursively), hidden ones left out."""
    fs, path = filesystem(root)
    if not fs.isdir(path):
        raise ConversionError(f"{what} {root} does not exist or is not a folder")
    base = path.rstrip("/") + "/"
    rels = (p[len(base):] for p in fs.find(path) if p.startswith(base))
    # ".DS_Store", "._x.jpg" (macOS), ".ipynb_checkpoints/": never part of a dataset
    return sorted(r for r in rels if not any(part.startswith(".") for part in r.split("/")))


def image_files(root: str, what: str = "folder") -> list[str]:
    return [r for r in list_files(root, what) if r.lower().endswith(IMAGE_SUFFIXES)]


def _is_dir(url: str) -> bool:
    fs, path = filesystem(url)
    return fs.isdir(path)


def _check_keys(items: list[Item]) -> None:
    seen: dict[str, str] = {}
    for item in items:
        if not item.key:
            raise ConversionError(f"{item.rel!r} gives an empty sample key")
        if item.key in seen:
            raise ConversionError(f"{seen[item.key]!r} and {item.rel!r} both give sample key {item.key!r}; "
                                  "rename one of them")
        seen[item.key] = item.rel


# ---------------------------------------------------------------------------------------------
# pixels

def crop_box(bbox, width: int, height: int, scale: float = 1.5) -> tuple[int, int, int, int]:
    """(x1, y1, x2, y2): a square of side scale * max(w, h) centred on the box, clipped to the
    image. Integer arithmetic exactly as in the FineGAN/ComGAN data loaders (r = int(max * 0.75)
    for the default 1.5), so crops match the paper's."""
    x, y, w, h = bbox
    r = int(max(w, h) * scale / 2)
    cx, cy = int((2 * x + w) / 2), int((2 * y + h) / 2)
    return max(0, cx - r), max(0, cy - r), min(width, cx + r), min(height, cy + r)


def resized_size(width: int, height: int, short: int) -> tuple[int, int]:
    """(W, H) with the shorter side `short` and the aspect ratio kept."""
    s = short / min(width, height)
    return (short, max(1, round(height * s))) if width <= height else (max(1, round(width * s)), short)


def binary_mask(img: Image.Image, rule: str = "grey") -> np.ndarray:
    """bool [H, W] foreground of a mask image (see the module docstring for the rules)."""
    if rule == "blue":
        rgb = np.asarray(img.convert("RGB"))
        r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
        return ~((b > BLUE_MIN) & (r < RED_GREEN_MAX) & (g < RED_GREEN_MAX))
    return np.asarray(mask_grey(img)) > 127


def _encode(img: Image.Image, jpeg: bool) -> tuple[bytes, str]:
    buf = io.BytesIO()
    if jpeg:
        img.save(buf, format="JPEG", quality=JPEG_QUALITY)
        return buf.getvalue(), "jpg"
    img.save(buf, format="PNG", compress_level=3)
    return buf.getvalue(), "png"


def _read(url: str) -> bytes | None:
    try:
        return read_bytes(url)
    except FileNotFoundError:  # other storage errors are the user's to fix: they propagate
        return None


def load_sample(item: Item, resize: int | None = None, crop_bbox: bool = False,
                bbox_scale: float = 1.5) -> dict | Skip:
    """The writer-ready sample of one item, or a Skip saying why there is none."""
    data = _read(item.image)
    if data is None:
        return Skip(item.rel, "missing image")
    try:
        img = open_image(data, SOURCE_FORMATS)
    except DECODE_ERRORS as e:
        return Skip(item.rel, "unreadable image", str(e))
    width, height = img.size
    fg = None
    if item.mask is not None:
        mdata = _read(item.mask)
        if mdata is None:
            return Skip(item.rel, "missing mask", item.mask)
        try:
            mimg = open_image(mdata, SOURCE_FORMATS)
        except DECODE_ERRORS as e:
            return Skip(item.rel, "unreadable mask", str(e))
        if mimg.size != img.size:
            return Skip(item.rel, "mask size differs from image", f"{mimg.size} vs {img.size}")
        fg = binary_mask(mimg, item.mask_rule)

    meta = {"source": item.rel, "size": [height, width], **item.meta}
    box = None
    if crop_bbox and item.bbox is not None:
        box = crop_box(item.bbox, width, height, bbox_scale)
        if box[2] <= box[0] or box[3] <= box[1]:
            return Skip(item.rel, "bounding box outside the image", str(item.bbox))
        meta["crop"] = list(box)
    w, h = (box[2] - box[0], box[3] - box[1]) if box else (width, height)
    target = resized_size(w, h, resize) if resize and min(w, h) != resize else None

    sample = {"key": item.key, "meta": meta}
    if box is None and target is None and img.format in PASS_FORMATS and img.mode in PASS_MODES:
        sample.update(image_bytes=data, image_ext=PASS_FORMATS[img.format])
    else:
        rgb = to_rgb8(img)
        rgb = rgb.crop(box) if box else rgb
        rgb = rgb.resize(target, Image.LANCZOS) if target else rgb
        sample["image_bytes"], sample["image_ext"] = _encode(rgb, jpeg=PASS_FORMATS.get(img.format) == "jpg")
    if fg is not None:
        m = Image.fromarray(fg.astype(np.uint8) * 255)
        m = m.crop(box) if box else m
        # bilinear then > 127, as the reader resizes masks: follows the object edge better than nearest
        m = m.resize(target, Image.BILINEAR) if target else m
        sample["mask"] = np.where(np.asarray(m) > 127, 255, 0).astype(np.uint8)
    return sample


# ---------------------------------------------------------------------------------------------
# the source object handed to the writer

def _ordered_map(fn: Callable, items: Iterable, workers: int) -> Iterator:
    """map(fn, items) in order, `workers` threads ahead (PIL decodes and fsspec reads release the GIL)."""
    if workers <= 1:
        yield from map(fn, items)
        return
    it = iter(items)
    with ThreadPoolExecutor(workers, thread_name_prefix="convert") as pool:
        pending = deque(pool.submit(fn, x) for x in itertools.islice(it, 4 * workers))
        while pending:
            result = pending.popleft().result()
            for x in itertools.islice(it, 1):
                pending.append(pool.submit(fn, x))
            yield result


class Source:
    """Writer-ready samples of a list of items, decoded lazily and in order. Items that cannot be
    used are left out: `skipped` counts them by reason (filled while the source is consumed)."""

    def __init__(self, name: str, items: list[Item], resize: int | None = None, crop_bbox: bool = False,
                 bbox_scale: float = 1.5, workers: int = 4, log: Progress | None = None):
        self.name, self.items, self.workers, self.log = name, items, workers, log
        self._load = partial(load_sample, resize=resize, crop_bbox=crop_bbox, bbox_scale=bbox_scale)
        self.skipped: Counter = Counter()

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[dict]:
        for result in _ordered_map(self._load, self.items, self.workers):
            if isinstance(result, Skip):
                self.skipped[result.reason] += 1
                self._warn(f"warning: skipped {result.rel}: {result.reason}"
                           + (f" ({result.detail.splitlines()[0]})" if result.detail else ""))
                if self.log is not None:
                    self.log.advance()  # the writer counts the samples it writes; we count the rest
                continue
            yield result

    def _warn(self, message: str) -> None:
        if self.log is not None:
            self.log.note(message)
        else:
            print(redact(message), file=sys.stderr, flush=True)


def _source(name: str, items: list[Item], shuffle_seed: int | None = 0, limit: int | None = None,
            **options) -> Source:
    """Check keys, fix the order (seeded shuffle or source order), apply the limit."""
    _check_keys(items)
    if shuffle_seed is not None:
        items = [items[i] for i in np.random.default_rng(shuffle_seed).permutation(len(items))]
    if limit is not None:
        items = items[:max(0, limit)]
    return Source(name, items, **options)


# ---------------------------------------------------------------------------------------------
# converters

def folder_source(root: str, masks: str | None = None, name: str = "folder", **options) -> Source:
    """Every image under `root` (recursive); with `masks`, the mask of image a/b/c.jpg is the
    image file a/b/c.* under `masks` (any image extension). Images without a mask are kept."""
    rels = image_files(root, "source folder")
    mask_index: dict[str, str] = {}
    if masks is not None:
        for rel in image_files(masks, "masks folder"):
            stem = _stem(rel)
            if stem in mask_index:
                raise ConversionError(f"two masks for {stem!r} in {masks}: {mask_index[stem]!r} and {rel!r}")
            mask_index[stem] = rel
        inner = _inside(masks, root)
        if inner is not None:  # masks kept inside the image folder are not images
            rels = [r for r in rels if not r.startswith(inner + "/")]
    if not rels:
        raise ConversionError(f"no images in {root} (looked for {', '.join(IMAGE_SUFFIXES)})")
    if masks is not None and not any(_stem(r) in mask_index for r in rels):
        raise ConversionError(f"none of the {len(mask_index)} files in {masks} matches an image of {root} by "
                              "relative path without extension (image a/b.jpg <-> mask a/b.png)")
    items = []
    for rel in rels:
        mask_rel = mask_index.get(_stem(rel))
        items.append(Item(key_for(rel), join_url(root, rel), rel,
                          mask=join_url(masks, mask_rel) if mask_rel else None,
                          meta={"mask_source": mask_rel} if mask_rel else {}))
    return _source(name, items, **options)


def images_source(root: str, **options) -> Source:
    """Images only (no masks): Stanford Cars/Dogs, CLEVR-style scenes, any photo collection."""
    return folder_source(root, None, name="images", **options)


def _inside(inner: str, outer: str) -> str | None:
    """Path of folder `inner` relative to folder `outer` if it lies inside it, else None."""
    (fs_i, p_i), (fs_o, p_o) = filesystem(inner), filesystem(outer)
    p_i, p_o = p_i.rstrip("/"), p_o.rstrip("/")
    if type(fs_i) is type(fs_o) and p_i.startswith(p_o + "/"):
        return p_i[len(p_o) + 1:]
    return None


def _table(root: str, name: str, columns: int, what: str, required: bool = True) -> dict[int, list[str]]:
    """A CUB text table "id v1 v2 ...": {id: [v1, ...]}; {} for a missing optional one."""
    url = join_url(root, name)
    data = _read(url)
    if data is None:
        if not required:
            return {}
        raise ConversionError(f"{root} is not a {what} folder: {name} not found")
    rows = {}
    for n, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != columns + 1 or not parts[0].isdigit():
            raise ConversionError(f"{url} line {n}: expected an id and {columns} values, got {line.strip()!r}")
        rows[int(parts[0])] = parts[1:]
    return rows


def _floats(row: list[str], url: str) -> tuple:
    try:
        return tuple(float(v) for v in row)
    except ValueError:
        raise ConversionError(f"{url}: not numbers: {' '.join(row)!r}") from None


def cub_source(root: str, split: str = "all", crop_bbox: bool = False, **options) -> Source:
    """CUB-200-2011 in images.txt order: split "train", "test" or "all"; with crop_bbox, each
    image and its mask are cropped around the bird (see crop_box). Without segmentations/ the
    images are written without masks."""
    if split not in ("train", "test", "all"):
        raise ConversionError(f"split must be train, test or all, got {split!r}")
    what = "CUB-200-2011"
    if not _is_dir(root):
        raise ConversionError(f"source folder {root} does not exist or is not a folder")
    images = _table(root, "images.txt", 1, what)
    boxes = _table(root, "bounding_boxes.txt", 4, what, required=crop_bbox)
    is_train = {i: row[0] == "1" for i, row in
                _table(root, "train_test_split.txt", 1, what, required=split != "all").items()}
    labels = {i: row[0] for i, row in _table(root, "image_class_labels.txt", 1, what, required=False).items()}
    seg_root = join_url(root, "segmentations")
    segs = {_stem(r): r for r in image_files(seg_root)} if _is_dir(seg_root) else {}

    items = []
    for i in sorted(images):
        rel = images[i][0]
        if split != "all":
            if i not in is_train:
                raise ConversionError(f"image {i} ({rel}) is missing from train_test_split.txt")
            if is_train[i] != (split == "train"):
                continue
        if crop_bbox and i not in boxes:
            raise ConversionError(f"image {i} ({rel}) is missing from bounding_boxes.txt")
        folder = rel.split("/", 1)[0]
        label = labels.get(i, folder.split(".", 1)[0])   # "001.Black_footed_Albatross" -> 1
        meta = {"cub_id": i, "class_name": folder, "class_id": int(label) if label.isdigit() else None}
        bbox = _floats(boxes[i], join_url(root, "bounding_boxes.txt")) if i in boxes else None
        if bbox is not None:
            meta["bbox"] = list(bbox)
        if i in is_train:
            meta["is_train"] = is_train[i]
        seg = segs.get(_stem(rel))
        if seg:
            meta["mask_source"] = f"segmentations/{seg}"
        items.append(Item(key_for(rel), join_url(root, "images", rel), f"images/{rel}",
                          mask=join_url(seg_root, seg) if seg else None, bbox=bbox, meta=meta))
    if not items:
        raise ConversionError(f"no {split} images listed in {join_url(root, 'images.txt')}")
    return _source("cub", items, crop_bbox=crop_bbox, **options)


def flowers_source(root: str, **options) -> Source:
    """Oxford 102 Flowers: jpg/image_NNNNN.jpg with masks from segmim/segmim_NNNNN.jpg, whose
    background is painted blue (see binary_mask). Images without a segmim get no mask."""
    if not _is_dir(root):
        raise ConversionError(f"source folder {root} does not exist or is not a folder")
    jpg = join_url(root, "jpg")
    if not _is_dir(jpg):
        raise ConversionError(f"{root} is not an Oxford 102 Flowers folder: jpg/ not found")
    rels = image_files(jpg)
    if not rels:
        raise ConversionError(f"no images in {jpg}")
    seg_root = join_url(root, "segmim")
    segs = {_stem(r): r for r in image_files(seg_root)} if _is_dir(seg_root) else {}
    items = []
    for rel in rels:
        seg = segs.get(_stem(rel).replace("image_", "segmim_", 1))
        items.append(Item(key_for(rel), join_url(jpg, rel), f"jpg/{rel}",
                          mask=join_url(seg_root, seg) if seg else None, mask_rule="blue",
                          meta={"mask_source": f"segmim/{seg}"} if seg else {}))
    return _source("flowers", items, **options)


CONVERTERS = {"folder": folder_source, "images": images_source, "cub": cub_source, "flowers": flowers_source}
