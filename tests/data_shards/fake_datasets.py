"""Tiny on-disk copies of the dataset layouts the converters read (CUB-200-2011, Oxford 102
Flowers, a generic folder) and of plain WebDataset tars as users hold them, drawn with PIL so
every expected pixel and mask is known. Shared by tests/data_shards/ and
tests/jobs/test_make_shards_cli.py."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from data_shards.io import join_url, read_bytes
from data_shards.writer import MANIFEST

RED = (220, 30, 30)


def save(path: Path, image, fmt: str | None = None, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = image if isinstance(image, Image.Image) else Image.fromarray(image)
    image.save(path, format=fmt, **kw)
    return path


def background(width: int, height: int, seed: int) -> np.ndarray:
    """Muted green-grey noise: never red, never the Flowers blue."""
    rng = np.random.default_rng(seed)
    base = np.array([70, 110, 80], np.int16)
    return np.clip(base + rng.integers(-15, 16, size=(height, width, 3)), 0, 255).astype(np.uint8)


def ellipse_mask(width: int, height: int, box) -> np.ndarray:
    """bool [H, W]: the filled ellipse inscribed in box (x1, y1, x2, y2)."""
    m = Image.new("L", (width, height), 0)
    ImageDraw.Draw(m).ellipse(box, fill=255)
    return np.asarray(m) > 127


# ---------------------------------------------------------------------------------------------
# CUB-200-2011

def make_cub(root: Path, classes: int = 3, per_class: int = 3, segmentations: bool = True) -> list[dict]:
    """A CUB-200-2011 folder: a red "bird" (an ellipse inside its bounding box) per image, soft
    segmentation masks as CUB has (255 inside, 200 and 60 rings around: > 127 keeps the first),
    every other image in the training split. One bird touches the image's left edge, so its
    crop is clipped. Returns one dict per image (id, rel, bbox, size, is_train, mask)."""
    records, lines = [], {"images": [], "boxes": [], "split": [], "labels": []}
    for c in range(classes):
        folder = "%03d.Bird_%s" % (c + 1, "ABCDEFG"[c])
        for k in range(per_class):
            i = len(records) + 1
            width, height = 64 + 8 * k, 48 + 6 * c
            x, y, w, h = (0.0 if i == 2 else 10.0 + 3 * k), 8.0 + 2 * c, 24.0 + 2 * c, 18.0 + k
            image = background(width, height, i)
            fg = ellipse_mask(width, height, (x, y, x + w - 1, y + h - 1))
            image[fg] = RED
            rel = f"{folder}/Bird_{c}_{k:04d}.jpg"
            save(root / "images" / rel, image, "JPEG", quality=92)
            if segmentations:
                ring200 = ellipse_mask(width, height, (x - 1, y - 1, x + w, y + h)) & ~fg
                ring60 = ellipse_mask(width, height, (x - 3, y - 3, x + w + 2, y + h + 2)) & ~fg & ~ring200
                seg = (fg * 255 + ring200 * 200 + ring60 * 60).astype(np.uint8)
                save(root / "segmentations" / rel.replace(".jpg", ".png"), seg)
            is_train = i % 2 == 1
            records.append({"id": i, "rel": rel, "bbox": (x, y, w, h), "size": (height, width),
                            "is_train": is_train, "mask": fg | ring200 if segmentations else None, "class": c + 1})
            lines["images"].append(f"{i} {rel}")
            lines["boxes"].append(f"{i} {x} {y} {w} {h}")
            lines["split"].append(f"{i} {int(is_train)}")
            lines["labels"].append(f"{i} {c + 1}")
    for name, key in (("images.txt", "images"), ("bounding_boxes.txt", "boxes"),
                      ("train_test_split.txt", "split"), ("image_class_labels.txt", "labels")):
        (root / name).write_text("\n".join(lines[key]) + "\n")
    return records


# ---------------------------------------------------------------------------------------------
# Oxford 102 Flowers

FLOWER_COLOURS = [(240, 200, 40), (130, 70, 210), (250, 250, 250), (60, 110, 230)]  # yellow, violet, white, blue


def make_flowers(root: Path, count: int = 4, without_segmim: tuple = (3,)) -> dict[str, np.ndarray]:
    """jpg/image_NNNNN.jpg (a flower disc on green) and segmim/segmim_NNNNN.jpg (the same picture
    with the background painted (0, 0, 254), saved as a noisy JPEG). The fourth flower is blue
    (60, 110, 230): close to the background colour, still a flower.
    Returns {key: true foreground} for the images that have a segmim."""
    truth = {}
    for n in range(1, count + 1):
        width, height = 56 + 4 * n, 48
        image = background(width, height, 100 + n)
        fg = ellipse_mask(width, height, (10 + n, 8, 40 + n, 40))
        image[fg] = FLOWER_COLOURS[(n - 1) % len(FLOWER_COLOURS)]
        save(root / "jpg" / f"image_{n:05d}.jpg", image, "JPEG", quality=90)
        if n in without_segmim:
            continue
        seg = image.copy()
        seg[~fg] = (0, 0, 254)
        save(root / "segmim" / f"segmim_{n:05d}.jpg", seg, "JPEG", quality=75)
        truth[f"image_{n:05d}"] = fg
    return truth


# ---------------------------------------------------------------------------------------------
# a generic folder

def make_folder(root: Path, masks: Path) -> dict:
    """Nested images of every awkward kind, masks by stem for some of them, one corrupt file and
    files that are not images. Returns what the converter should make of them."""
    rgb = background(40, 30, 1)
    fg = ellipse_mask(40, 30, (8, 5, 30, 24))
    rgb[fg] = RED
    save(root / "a" / "photo.one.jpg", rgb, "JPEG", quality=90)
    save(masks / "a" / "photo.one.png", (fg * 255).astype(np.uint8))                      # 0/255
    save(root / "a" / "b" / "plain.png", rgb)
    save(masks / "a" / "b" / "plain.png", fg.astype(np.uint8))                            # 0/1 valued
    save(root / "grey.jpg", Image.fromarray(rgb).convert("L"), "JPEG", quality=90)
    save(masks / "grey.jpg", (fg * 250).astype(np.uint8), "JPEG", quality=80)           # noisy grey
    rgba = np.dstack([rgb, np.full((30, 40), 128, np.uint8)])
    save(root / "rgba.png", rgba)
    deep = (np.arange(30 * 40, dtype=np.uint16).reshape(30, 40) * 50).astype(np.uint16)  # 0..59950
    save(root / "deep16.png", Image.fromarray(deep))                                  # mode I;16
    save(masks / "deep16.png", (fg * 255).astype(np.uint8))
    save(root / "pal.png", Image.fromarray(rgb).convert("P"))
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (root / "notes.txt").write_text("not an image")
    save(root / ".hidden.jpg", rgb, "JPEG")
    return {"fg": fg, "deep": deep,
            "keys": {"a__photo_one", "a__b__plain", "grey", "rgba", "deep16", "pal"},
            "with_masks": {"a__photo_one", "a__b__plain", "grey", "deep16"}}


# ---------------------------------------------------------------------------------------------
# reading a written set back without the reader

def read_set(url: str) -> tuple[dict, dict[str, dict[str, bytes]]]:
    """(manifest, {key: {suffix: bytes}}) of a shard set, read through io.py and tarfile only."""
    import json

    manifest = json.loads(read_bytes(join_url(url, MANIFEST)))
    samples: dict[str, dict[str, bytes]] = {}
    for shard in manifest["shards"]:
        with tarfile.open(fileobj=io.BytesIO(read_bytes(join_url(url, shard["name"])))) as tar:
            for member in tar:
                key, suffix = member.name.split(".", 1)
                samples.setdefault(key, {})[suffix] = tar.extractfile(member).read()
    return manifest, samples


def decode(data: bytes, mode: str | None = None) -> np.ndarray:
    img = Image.open(io.BytesIO(data))
    return np.asarray(img.convert(mode) if mode else img)


# ---------------------------------------------------------------------------------------------
# shard sets written by hand, so they can hold what the writer never produces

def write_set(folder: Path, shards: list[list[dict]], has_masks: bool = True, listed: list[int] | None = None) -> str:
    """A shard set from raw samples ({"__key__": ..., "<field>": bytes}); `listed` overrides the
    per-shard sample counts manifest.json claims (for shards that lost samples)."""
    import json

    import webdataset as wds

    folder.mkdir()
    entries = []
    for i, samples in enumerate(shards):
        name = "shard-%06d.tar" % i
        with wds.TarWriter(str(folder / name), encoder=False) as w:
            for s in samples:
                w.write(s)
        entries.append({"name": name, "num_samples": len(samples) if listed is None else listed[i]})
    manifest = {"format": "ds-comgan-shards/1", "num_samples": sum(e["num_samples"] for e in entries),
                "has_masks": has_masks, "shards": entries}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return str(folder)


# ---------------------------------------------------------------------------------------------
# plain WebDataset tars, as img2dataset or a webdataset.TarWriter script writes them

PLAIN_LAYOUT = [("jpg", "JPEG", "mask.png", "PNG"), ("png", "PNG", "mask.png", "PNG"),
                ("jpeg", "JPEG", "mask.jpg", "JPEG")]   # (image field, format, mask field, format) by shard


def plain_value(k: int) -> int:
    """The flat grey of plain sample k: told apart after JPEG and resizing."""
    return (20 + 13 * k) % 256


def _encoded(array: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def write_plain_tars(folder: Path, per_shard=(5, 5, 5), without_masks=(), name: str = "photos-%04d.tar",
                     first_key: int = 0) -> list[str]:
    """Shards of samples KEY.<image> + KEY.json + KEY.txt (+ a mask), no manifest.json. Shard s
    stores its images as PLAIN_LAYOUT[s % 3] says (jpg, png, jpeg) and its masks (foreground: the
    top half) as mask.png or mask.jpg, except the shards in `without_masks`; images are
    (10 + 2s) x (12 + s) pixels, a flat plain_value(key). Returns the sample keys in stored order."""
    import webdataset as wds

    folder.mkdir(parents=True, exist_ok=True)
    keys = []
    for s, count in enumerate(per_shard):
        image_key, fmt, mask_key, mask_fmt = PLAIN_LAYOUT[s % 3]
        h, w = 10 + 2 * s, 12 + s
        mask = np.zeros((h, w), np.uint8)
        mask[: h // 2] = 255
        with wds.TarWriter(str(folder / (name % s))) as tw:
            for _ in range(count):
                k = first_key + len(keys)
                sample = {"__key__": f"{k:06d}", image_key: _encoded(np.full((h, w, 3), plain_value(k), np.uint8), fmt),
                          "json": {"index": k}, "txt": f"caption {k}"}
                if s not in without_masks:
                    sample[mask_key] = _encoded(mask, mask_fmt)
                tw.write(sample)
                keys.append(sample["__key__"])
    return keys
