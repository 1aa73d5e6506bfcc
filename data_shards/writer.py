"""Write samples as WebDataset shards plus a manifest, to any URL io.py can open.

A shard set is a folder:

    shard-000000.tar, shard-000001.tar, ...   per sample: KEY.image.png, KEY.mask.png (if any), KEY.json
    manifest.json                             written last: a folder without it is not a dataset

Each shard is built in a local temporary file and then copied, so S3 sees whole objects and a
crash never leaves a manifest that points at half-written shards.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tempfile
from typing import Iterable

import numpy as np
import webdataset as wds
from PIL import Image

from data_shards.io import join_url, put_file, remove_url, write_bytes
from data_shards.synthetic import synthetic_samples

FORMAT = "ds-comgan-shards/1"
MANIFEST = "manifest.json"


def shard_name(index: int) -> str:
    return "shard-%06d.tar" % index


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


def write_shards(samples: Iterable[dict], dest_url: str, samples_per_shard: int = 1000, info: dict | None = None,
                 progress: bool = True, total: int | None = None) -> dict:
    """Write samples {"key", "image" uint8 HWC, optional "mask" uint8 HW, optional "meta" dict} as shards
    under dest_url and return the manifest. `total` (or len(samples)) only improves progress lines."""
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    total = total if total is not None else (len(samples) if hasattr(samples, "__len__") else None)
    remove_url(join_url(dest_url, MANIFEST))  # while rewriting, the folder is not a valid dataset
    shards, sizes, num_masks = [], [], 0

    with tempfile.TemporaryDirectory(prefix="shards-") as tmp:
        writer, local, count = None, None, 0

        def finish():
            writer.close()
            name = shard_name(len(shards))
            shards.append({"name": name, "num_samples": count, "bytes": os.path.getsize(local),
                           "sha256": _sha256(local)})
            put_file(local, join_url(dest_url, name))
            os.remove(local)
            if progress:
                done = sum(s["num_samples"] for s in shards)
                print(f"wrote {name}  {done}{f'/{total}' if total else ''} samples", file=sys.stderr, flush=True)

        for sample in samples:
            if writer is None:
                local = os.path.join(tmp, shard_name(len(shards)))
                # an int mtime gives the same bytes every run and no per-file pax headers
                writer, count = wds.TarWriter(local, encoder=False, mtime=0), 0
            key = str(sample["key"])
            if not key or "." in key or "/" in key:  # webdataset splits file names at the first "."
                raise ValueError(f"sample key {key!r}: keys must be non-empty, without '.' or '/'")
            image = np.asarray(sample["image"], dtype=np.uint8)
            if image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"sample {key}: image must be uint8 [H, W, 3], got shape {image.shape}")
            record = {"__key__": key, "image.png": _png(image),
                      "json": json.dumps(sample.get("meta") or {}).encode()}
            if sample.get("mask") is not None:
                record["mask.png"] = _png(np.asarray(sample["mask"], dtype=np.uint8))
                num_masks += 1
            writer.write(record)
            sizes.append(image.shape[:2])
            count += 1
            if count == samples_per_shard:
                finish()
                writer = None
        if writer is not None:
            finish()

    if not sizes:
        raise ValueError(f"no samples to write to {dest_url}")
    sizes = np.array(sizes)
    manifest = {
        "format": FORMAT,
        "num_samples": len(sizes),
        "resolution": [int(v) for v in sizes[0]],     # [H, W] of the first image
        "min_resolution": [int(v) for v in sizes.min(0)],
        "max_resolution": [int(v) for v in sizes.max(0)],
        "has_masks": num_masks == len(sizes),
        "shards": shards,
        "info": info or {},
    }
    write_bytes(join_url(dest_url, MANIFEST), json.dumps(manifest, indent=1).encode())
    return manifest


def write_synthetic(dest_url: str, count: int, resolution: int, num_styles: int, seed: int,
                    samples_per_shard: int = 1000, progress: bool = True) -> dict:
    """The built-in synthetic set (see synthetic.py) as shards; the options go into manifest["info"]."""
    info = {"generator": "data_shards.synthetic", "count": count, "resolution": resolution,
            "num_styles": num_styles, "seed": seed}
    return write_shards(synthetic_samples(count, resolution, num_styles, seed), dest_url,
                        samples_per_shard=samples_per_shard, info=info, progress=progress, total=count)
