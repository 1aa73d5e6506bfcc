"""Write samples as WebDataset shards plus a manifest, to any URL io.py can open.

A shard set is a folder:

    shard-000000.tar, shard-000001.tar, ...   per sample: KEY.image.{png,jpg,webp}, KEY.mask.png (if any), KEY.json
    manifest.json                             written last: a folder without it is not a dataset

Each shard is built in a local temporary file and copied as soon as it is complete, so S3 sees
whole objects and a crash never leaves a manifest that points at half-written shards.

A destination that holds anything at all is refused unless overwrite is asked for; even then
only files of ours are replaced or deleted: manifest.json and the shard names the new set writes
are replaced, and old shards are deleted only when our writer's manifest there lists them (a
manifest of `jobs/make_shards.py index` lists a user's own tars: none of those). Anything else in
the folder, such as plain tars of another tool beyond the new set's count, is left alone.

Rewriting a folder that holds a shard set: the old manifest is deleted before the first shard is
replaced, so a reader that starts meanwhile fails (index.py indexes plain tars that lack a
manifest, but refuses ours) instead of mixing old and new shards; shards the new set does not
reuse are deleted only after the new manifest is written, so the folder never lists a shard that
is missing. (A reader that opened the old manifest before the rewrite and is still streaming
will see the new contents under the old names: shard names are not versioned, so do not rewrite a
set that a running job reads.)
"""
from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
from typing import Iterable, Mapping

import numpy as np
from PIL import Image

from comgan.errors import UserError  # the one import from comgan/ (docs/DESIGN.md, section 2)
from data_shards.images import open_header
from data_shards.io import holds_anything, join_url, put_file, read_bytes, remove_url, url_exists, write_bytes
from data_shards.progress import Progress
from data_shards.synthetic import synthetic_samples

FORMAT = "ds-comgan-shards/1"
MANIFEST = "manifest.json"
IMAGE_EXTS = ("png", "jpg", "webp")        # stored image kinds; the reader also accepts "jpeg"
SHARD_RE = re.compile(r"^shard-\d{6}\.tar$")
MAX_KEYS_LISTED = 10000                     # samples_without_masks is cut here: manifests stay small


class ShardWriteError(UserError):
    """A write that cannot go ahead as asked; the message is one line for the user."""


class DestinationExists(ShardWriteError):
    """The destination already holds something and overwriting was not allowed."""


def shard_name(index: int) -> str:
    return "shard-%06d.tar" % index


def parse_size(text: str) -> int:
    """Bytes from "256MB", "1.5GB", "64MiB", "500k" or "1048576": K/M/G/T are powers of 1000,
    Ki/Mi/Gi/Ti powers of 1024, a trailing "B" is optional."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(i?)b?\s*", str(text), re.IGNORECASE)
    if not m or (m.group(3) and not m.group(2)):
        raise ValueError(f"not a size: {text!r} (examples: 256MB, 1.5GB, 64MiB, 1048576)")
    power = "kmgt".find(m.group(2).lower()) + 1 if m.group(2) else 0
    value = int(float(m.group(1)) * (1024 if m.group(3) else 1000) ** power)
    if value < 1:
        raise ValueError(f"size must be at least 1 byte, got {text!r}")
    return value


def format_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# one sample -> the files of its tar entry

def _image_entry(sample: dict, key: str) -> tuple[str, bytes, tuple[int, int]]:
    """(file suffix, bytes, (H, W)) of a sample's image: pre-encoded bytes are stored as they are
    (the size comes from the header; nothing is decoded), an array is encoded as PNG."""
    if sample.get("image_bytes") is not None:
        ext = str(sample.get("image_ext", "")).lower().lstrip(".")
        ext = "jpg" if ext == "jpeg" else ext
        if ext not in IMAGE_EXTS:
            raise ValueError(f"sample {key}: image_ext must be one of {', '.join(IMAGE_EXTS)}, got {ext!r}")
        data = bytes(sample["image_bytes"])
        try:
            with open_header(data) as img:  # JPEG, PNG or WebP, at most images.MAX_PIXELS
                w, h = img.size
        except Exception as e:  # PIL raises several types for bytes that are no image
            raise ValueError(f"sample {key}: image_bytes are not an image this set can hold ({e})") from None
        return "image." + ext, data, (h, w)
    image = np.asarray(sample["image"], dtype=np.uint8)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"sample {key}: image must be uint8 [H, W, 3], got shape {image.shape}")
    return "image.png", _png(image), image.shape[:2]


def _record(sample: dict) -> tuple[str, dict, tuple[int, int]]:
    """(key, {suffix: bytes}, image (H, W)) for one sample, checked."""
    key = str(sample["key"])
    if not key or "." in key or "/" in key:  # webdataset splits file names at the first "."
        raise ValueError(f"sample key {key!r}: keys must be non-empty, without '.' or '/'")
    suffix, data, size = _image_entry(sample, key)
    files = {suffix: data, "json": json.dumps(sample.get("meta") or {}).encode()}
    if sample.get("mask") is not None:
        mask = np.asarray(sample["mask"])
        mask = mask.astype(np.uint8) * 255 if mask.dtype == bool else mask.astype(np.uint8)
        if mask.shape != tuple(size):
            raise ValueError(f"sample {key}: mask shape {mask.shape} differs from the image's {tuple(size)}")
        files["mask.png"] = _png(mask)
    return key, files, size


# ---------------------------------------------------------------------------------------------
# tar files whose final size is known before each sample is added

def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    # Fixed owner, mode and an int mtime: the same samples give the same bytes on every run.
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode, ti.uname, ti.gname = size, 0, 0o444, "bigdata", "bigdata"
    return ti


def _member_bytes(ti: tarfile.TarInfo) -> int:
    header = len(ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))  # long names add pax blocks
    return header + -(-ti.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def _closed_size(offset: int) -> int:
    """Size of a tar closed at `offset`: two zero blocks, then padding to a whole record."""
    end = offset + 2 * tarfile.BLOCKSIZE
    return -(-end // tarfile.RECORDSIZE) * tarfile.RECORDSIZE


class _Shard:
    """One shard being built in a local file."""

    def __init__(self, path: str):
        self.path = path
        self.tar = tarfile.open(path, "w", format=tarfile.PAX_FORMAT, encoding="utf-8")
        self.offset = self.count = self.num_masks = 0

    def size_with(self, entries: list) -> int:
        return _closed_size(self.offset + sum(_member_bytes(ti) for ti, _ in entries))

    def add(self, entries: list, has_mask: bool) -> None:
        for ti, data in entries:
            self.tar.addfile(ti, io.BytesIO(data))
            self.offset += _member_bytes(ti)
        self.count += 1
        self.num_masks += has_mask

    def close(self) -> None:
        self.tar.close()


# ---------------------------------------------------------------------------------------------
# destination

def check_destination(dest_url: str, overwrite: bool) -> None:
    """Refuse a destination that holds anything (a shard set or any other file) unless overwrite."""
    if overwrite or not holds_anything(dest_url):
        return
    if url_exists(join_url(dest_url, MANIFEST)):
        raise DestinationExists(f"{dest_url} already holds a shard set (manifest.json); "
                                "use --overwrite to replace it")
    raise DestinationExists(f"{dest_url} is not empty: give a new or empty destination, or use --overwrite to "
                            "write into it (files named manifest.json and shard-NNNNNN.tar are replaced, "
                            "nothing else is touched)")


def _written_shards(dest_url: str) -> set[str]:
    """The shards that our writer's manifest at dest_url lists: the only old files a rewrite may
    delete. An indexed manifest lists a user's own tars, a foreign or broken one nothing of ours."""
    try:
        manifest = json.loads(read_bytes(join_url(dest_url, MANIFEST)))
    except (FileNotFoundError, ValueError):
        return set()
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("indexed"):
        return set()
    names = {s.get("name") for s in manifest.get("shards") or [] if isinstance(s, dict)}
    return {n for n in names if isinstance(n, str) and SHARD_RE.match(n)}


def _resolution_stats(sizes: np.ndarray) -> dict:
    """Image sizes in a manifest: min/max/mean [H, W] and a histogram of the shorter side."""
    short = sizes.min(1)
    edges = [0, 64, 128, 256, 512, 1024, 2048]
    hist = {}
    for lo, hi in zip(edges, edges[1:] + [None]):
        n = int(((short >= lo) & (short < hi if hi else True)).sum())
        if n:
            hist[f"{lo}-{hi - 1}" if hi else f"{lo}+"] = n
    return {"resolution": [int(v) for v in sizes[0]],     # [H, W] of the first image
            "min_resolution": [int(v) for v in sizes.min(0)],
            "max_resolution": [int(v) for v in sizes.max(0)],
            "mean_resolution": [round(float(v), 1) for v in sizes.mean(0)],
            "short_side_histogram": hist}


def _as_progress(progress, total: int | None, label: str = "write") -> Progress:
    if isinstance(progress, Progress):
        return progress
    return Progress(total, label=label, enabled=bool(progress))


# ---------------------------------------------------------------------------------------------
# the writer

def write_shards(samples: Iterable[dict], dest_url: str, samples_per_shard: int = 1000, info: dict | None = None,
                 progress: bool | Progress = True, total: int | None = None, shard_bytes: int | None = None,
                 overwrite: bool = True, converter: dict | None = None,
                 skipped: Mapping[str, int] | None = None) -> dict:
    """Write samples as shards under dest_url and return the manifest.

    A sample is {"key", "image" uint8 [H, W, 3] | "image_bytes" + "image_ext" (png, jpg, webp:
    stored unchanged), optional "mask" uint8 or bool [H, W], optional "meta" dict}.
    samples_per_shard          a shard holds at most this many samples
    shard_bytes                ... and at most this many bytes (a single larger sample gets a shard of its own)
    overwrite                  False: refuse (DestinationExists) if dest_url holds anything; True:
                               write into it, deleting only old shards our manifest lists
    info, converter            recorded in the manifest as they are (no secrets here)
    skipped                    {reason: count} of source items left out; read after the last
                               sample, so a source can fill it while it is consumed
    progress, total            a Progress (shared with the source), or True for one of our own;
                               `total` (or len(samples)) only improves its lines
    """
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    if shard_bytes is not None and shard_bytes < 1:
        raise ValueError(f"shard_bytes must be >= 1, got {shard_bytes}")
    total = total if total is not None else (len(samples) if hasattr(samples, "__len__") else None)
    check_destination(dest_url, overwrite)
    old = _written_shards(dest_url)
    remove_url(join_url(dest_url, MANIFEST))  # while rewriting, the folder is not a valid dataset
    report = _as_progress(progress, total)
    shards, sizes, missing_masks = [], [], []

    with tempfile.TemporaryDirectory(prefix="shards-") as tmp:
        shard = None

        def finish():
            shard.close()
            name = shard_name(len(shards))
            shards.append({"name": name, "num_samples": shard.count, "num_masks": shard.num_masks,
                           "bytes": os.path.getsize(shard.path), "sha256": _sha256(shard.path)})
            put_file(shard.path, join_url(dest_url, name))  # uploaded now, not at the end
            os.remove(shard.path)
            report.note(f"wrote {name}: {shard.count} samples, {format_size(shards[-1]['bytes'])}")

        for sample in samples:
            key, files, size = _record(sample)
            entries = [(_tarinfo(f"{key}.{suffix}", len(data)), data) for suffix, data in sorted(files.items())]
            if shard is not None and shard_bytes is not None and shard.size_with(entries) > shard_bytes:
                finish()
                shard = None
            if shard is None:
                shard = _Shard(os.path.join(tmp, shard_name(len(shards))))
            shard.add(entries, "mask.png" in files)
            sizes.append(size)
            if "mask.png" not in files:
                missing_masks.append(key)
            report.advance()
            if shard.count == samples_per_shard:
                finish()
                shard = None
        if shard is not None:
            finish()
    report.close()

    if not sizes:
        raise ShardWriteError(f"no samples to write to {dest_url}")
    num_masks = len(sizes) - len(missing_masks)
    manifest = {
        "format": FORMAT,
        "num_samples": len(sizes),
        **_resolution_stats(np.array(sizes)),
        "has_masks": num_masks == len(sizes),
        "num_masks": num_masks,
        "shards": shards,
        "skipped": dict(skipped or {}),
        "converter": converter or {},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "info": info or {},
    }
    if 0 < num_masks < len(sizes):
        manifest["samples_without_masks"] = missing_masks[:MAX_KEYS_LISTED]
        if len(missing_masks) > MAX_KEYS_LISTED:
            manifest["samples_without_masks_truncated"] = True
    write_bytes(join_url(dest_url, MANIFEST), json.dumps(manifest, indent=1).encode())
    for name in sorted(old - {s["name"] for s in shards}):
        remove_url(join_url(dest_url, name))  # stale: after the manifest, which no longer lists them
    return manifest


def write_synthetic(dest_url: str, count: int, resolution: int, num_styles: int, seed: int,
                    samples_per_shard: int = 1000, progress: bool | Progress = True, **write_options) -> dict:
    """The built-in synthetic set (see synthetic.py) as shards; the options go into manifest["info"].
    write_options (shard_bytes, overwrite, converter) are passed to write_shards."""
    info = {"generator": "data_shards.synthetic", "count": count, "resolution": resolution,
            "num_styles": num_styles, "seed": seed}
    write_options.setdefault("converter", {"name": "synthetic", "options": dict(info)})
    return write_shards(synthetic_samples(count, resolution, num_styles, seed), dest_url,
                        samples_per_shard=samples_per_shard, info=info, total=count,
                        progress=_as_progress(progress, count, label=f"synthetic seed {seed}"), **write_options)
