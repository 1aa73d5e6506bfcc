"""Stream shard sets written by writer.py: an endless, sharded training loader and a finite,
ordered evaluation reader. Shards are opened through io.py (fsspec), so a local folder, file://
and s3:// all work; each DataLoader worker opens its own connections after the fork.

Bad data never crashes a run: a truncated shard, a sample without an image, an image or mask that
does not decode, or a mask of another size than its image is skipped (or, for the mask, resized)
per sample, counted by kind in a ProblemLog and warned about; the training loader hands each
batch's new counts to the caller (TrainBatch.problems) so they reach TensorBoard. Grayscale,
palette, RGBA and 16-bit images are converted to 8-bit RGB.

How samples are split between ranks and loader workers (see shards_for_rank): each of the
world_size * num_workers "slots" gets whole shards when there are enough of them, and shares the
leftover shards sample by sample, so every slot sees a disjoint, near-equal part of the data. Each
slot then cycles through its part forever, reshuffling shard order every pass, so every rank yields
the same (unbounded) number of full batches and DDP never waits on a rank that ran dry.
"""
from __future__ import annotations

import itertools
import json
import logging
import tarfile
import zlib
from functools import partial
from typing import Iterator, NamedTuple

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from webdataset.tariterators import group_by_keys, tar_file_expander

from data_shards.images import mask_grey, open_image, to_rgb8
from data_shards.io import filesystem, join_url, open_url, read_bytes
from data_shards.writer import FORMAT, MANIFEST

SHUFFLE_BUFFER = 500    # samples (still encoded bytes) mixed across neighbouring shards
IMAGE_EXTENSIONS = ("image.png", "image.jpg", "image.jpeg", "image.webp")
MASK_EXTENSION = "mask.png"
PROBLEM_KINDS = ("truncated_shard", "missing_image", "undecodable_image", "missing_mask", "undecodable_mask",
                 "mask_resized")
WARN_FIRST, WARN_EVERY = 5, 1000    # per kind and process: the first few, then every 1000th

logger = logging.getLogger("data_shards")


class DatasetError(ValueError):
    """A problem with a shard set that the user has to fix; the message is one line."""


class ProblemLog:
    """Counts of bad data by kind (PROBLEM_KINDS) with rate-limited warnings. One per pipeline:
    each DataLoader worker holds its own copy, and `take()` hands over what is new since the last
    call so the counts travel to the training process inside the batches."""

    def __init__(self):
        self.total = dict.fromkeys(PROBLEM_KINDS, 0)
        self._taken = dict(self.total)

    def add(self, kind: str, where: str, detail: object = "") -> None:
        self.total[kind] += 1
        n = self.total[kind]
        if n <= WARN_FIRST or n % WARN_EVERY == 0:
            more = " (further ones counted, warned every 1000th)" if n == WARN_FIRST else ""
            logger.warning("data problem #%d of kind %s: %s%s%s", n, kind, where,
                           f": {str(detail).splitlines()[0]}" if str(detail) else "", more)

    def take(self) -> tuple[int, ...]:
        new = tuple(self.total[k] - self._taken[k] for k in PROBLEM_KINDS)
        self._taken = dict(self.total)
        return new


class TrainBatch(NamedTuple):
    images: torch.Tensor            # float [B, 3, H, W] in [-1, 1]
    keys: list[str]                 # sample keys, for tests and debugging
    problems: tuple[int, ...]       # bad samples met since the previous batch, per PROBLEM_KINDS


# ---------------------------------------------------------------------------------------------
# manifest and split

def read_manifest(url: str) -> dict:
    """The manifest of the shard set in folder `url`, checked enough to stream from it."""
    murl = join_url(url, MANIFEST)
    try:
        raw = read_bytes(murl)
    except FileNotFoundError:
        fs, path = filesystem(url)
        if "://" not in url and not fs.exists(path):  # object stores have prefixes, not folders
            raise DatasetError(f"no shard dataset at {url}: the folder does not exist") from None
        raise DatasetError(f"no shard dataset at {url}: manifest.json not found (write shards with "
                           "jobs/make_shards.py; a set without one is empty or an unfinished write)") from None
    try:
        manifest = json.loads(raw)
    except ValueError as e:
        raise DatasetError(f"{murl} is not valid JSON: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DatasetError(f"{murl} is not a {FORMAT} manifest")
    if not manifest.get("shards"):
        raise DatasetError(f"{murl} lists no shards")
    if int(manifest.get("num_samples", 0)) <= 0:
        raise DatasetError(f"{murl} lists zero samples")
    return manifest


def shard_urls(url: str, manifest: dict) -> list[str]:
    return [join_url(url, s["name"]) for s in manifest["shards"]]


def shards_for_rank(shard_urls: list, rank: int, world_size: int, worker: int, num_workers: int) -> list:
    """What (rank, loader worker) reads: a list of (shard, remainder, modulus), meaning "of this
    shard, keep the samples whose global index % modulus == remainder".

    With S shards and n = world_size * num_workers slots, the first S - S % n shards are dealt
    whole, round robin (modulus 1); the last S % n shards are read by every slot and split by
    sample index (modulus n). With fewer shards than slots every slot thus reads all shards and
    keeps every n-th sample. Slots are numbered worker-major (worker * world_size + rank), so ranks
    stay balanced when workers are not. Deterministic: depends on the arguments only.
    """
    if not (0 <= rank < world_size and 0 <= worker < max(1, num_workers)):
        raise ValueError(f"bad split: rank {rank} of {world_size}, worker {worker} of {num_workers}")
    n = world_size * max(1, num_workers)
    slot = worker * world_size + rank
    whole = len(shard_urls) - len(shard_urls) % n
    return [(u, 0, 1) for u in shard_urls[slot:whole:n]] + [(u, slot, n) for u in shard_urls[whole:]]


def steps_per_epoch(manifest: dict, global_batch: int) -> int:
    return max(1, int(manifest["num_samples"]) // global_batch)


# ---------------------------------------------------------------------------------------------
# reading and decoding

def _read_shard(url: str, problems: ProblemLog) -> Iterator[dict]:
    """Samples of one shard in stored order: {"__key__", "image.<ext>", "mask.png"?, "json"}.
    A truncated or corrupt tar yields what precedes the damage, then counts one problem."""
    try:
        with open_url(url) as stream:
            yield from group_by_keys(tar_file_expander([{"url": url, "stream": stream}]))
    except FileNotFoundError:
        raise DatasetError(f"{url} is listed in manifest.json but missing") from None
    except (tarfile.TarError, EOFError, zlib.error) as e:
        problems.add("truncated_shard", url, e.args[0] if e.args else e)  # webdataset appends objects to args


def _image_bytes(sample: dict) -> bytes | None:
    return next((sample[k] for k in IMAGE_EXTENSIONS if k in sample), None)


def _fit(img: Image.Image, size: tuple[int, int] | None, resample) -> Image.Image:
    """Centre-crop to square and resize when the stored image is not already `size` (H, W)."""
    if size is None or img.size == (size[1], size[0]):
        return img
    w, h = img.size
    if size[0] == size[1] and w != h:  # a square target from a non-square image: crop, don't squash
        s = min(w, h)
        img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    return img.resize((size[1], size[0]), resample)


def _decode_image(data: bytes, size) -> np.ndarray:
    """RGB uint8 [H, W, 3] from any PIL-readable bytes: grey, palette, RGBA (alpha dropped), 16-bit."""
    return np.asarray(_fit(to_rgb8(open_image(data)), size, Image.BICUBIC))


def _to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float [B, 3, H, W] in [-1, 1]."""
    # numpy, not torch ops: torch's intra-op threads cost more than they save on tensors this small
    x = np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2), dtype=np.float32)
    x *= 1 / 127.5
    x -= 1
    return torch.from_numpy(x)


def _image_size(url: str, manifest: dict, resolution: int | None) -> tuple[int, int] | None:
    """Target (H, W): square `resolution`, else the stored size, which must then be uniform."""
    if resolution is not None:
        return int(resolution), int(resolution)
    lo, hi = manifest.get("min_resolution"), manifest.get("max_resolution")
    if lo is not None and lo != hi:
        raise DatasetError(f"images in {url} range from {lo} to {hi} pixels; pass a resolution to resize them")
    return None


# ---------------------------------------------------------------------------------------------
# training: endless, sharded, shuffled

def _worker() -> tuple[int, int]:
    info = torch.utils.data.get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([p % 2**63 for p in parts]).generate_state(1)[0])


def _endless_samples(urls: list[str], offsets: dict, rank: int, world_size: int, seed: int,
                     problems: ProblemLog) -> Iterator[dict]:
    """First pipeline stage, run inside each loader worker: this slot's samples, pass after pass."""
    worker, num_workers = _worker()
    mine = shards_for_rank(urls, rank, world_size, worker, num_workers)
    for epoch in itertools.count():
        order = np.random.default_rng(_seed(seed, rank, worker, epoch)).permutation(len(mine))
        count = 0
        for j in order:
            url, rem, mod = mine[j]
            for i, sample in enumerate(_read_shard(url, problems)):
                if (offsets[url] + i) % mod == rem:
                    count += 1
                    yield sample
        if count == 0:  # would otherwise spin forever without yielding
            raise DatasetError(f"loader slot (rank {rank}, worker {worker}) got no samples: "
                               f"{len(urls)} shards are too few for {world_size * num_workers} readers")


def _shuffle(src, seed: int, rank: int):
    worker_seed = _seed(seed, rank, _worker()[0], 1 << 20)  # per worker: a seed fixed at construction would be shared
    return wds.shuffle(SHUFFLE_BUFFER, initial=min(100, SHUFFLE_BUFFER), seed=worker_seed)(src)


def _where(sample: dict) -> str:
    return f"sample {sample.get('__key__')} in {sample.get('__url__')}"


def _decode(src, size, hflip: bool, seed: int, rank: int, problems: ProblemLog):
    rng = np.random.default_rng(_seed(seed, rank, _worker()[0], 1 << 21))
    for sample in src:
        data = _image_bytes(sample)
        if data is None:
            problems.add("missing_image", _where(sample), f"has only {sorted(k for k in sample if k[:2] != '__')}")
            continue
        try:
            image = _decode_image(data, size)
        except Exception as e:  # PIL raises many types for damaged files; any of them skips the sample
            problems.add("undecodable_image", _where(sample), e)
            continue
        if hflip and rng.random() < 0.5:
            image = image[:, ::-1]
        yield image, sample["__key__"]


def _collate(batch: list, problems: ProblemLog) -> TrainBatch:
    return TrainBatch(_to_tensor([b[0] for b in batch]), [b[1] for b in batch], problems.take())


def train_loader(url: str, batch_size: int, rank: int = 0, world_size: int = 1, num_workers: int = 1, seed: int = 0,
                 resolution: int | None = None, hflip: bool = True) -> wds.WebLoader:
    """Endless full TrainBatches for one rank. num_workers=0 reads in-process."""
    manifest = read_manifest(url)
    urls = shard_urls(url, manifest)
    offsets = dict(zip(urls, np.cumsum([0] + [s["num_samples"] for s in manifest["shards"]]).tolist()))
    slots = world_size * max(1, num_workers)
    if manifest["num_samples"] < slots:
        raise DatasetError(f"{url} has {manifest['num_samples']} samples, fewer than the "
                           f"{slots} readers (world_size x num_workers)")
    size = _image_size(url, manifest, resolution)
    problems = ProblemLog()  # copied into each loader worker, so each counts its own
    pipeline = wds.DataPipeline(
        partial(_endless_samples, urls, offsets, rank, world_size, seed, problems=problems),
        partial(_shuffle, seed=seed, rank=rank),
        partial(_decode, size=size, hflip=hflip, seed=seed, rank=rank, problems=problems),
        wds.batched(batch_size, collation_fn=partial(_collate, problems=problems), partial=False),
    )
    return wds.WebLoader(pipeline, batch_size=None, num_workers=num_workers)


# ---------------------------------------------------------------------------------------------
# evaluation: every sample once, in stored order

def _eval_pair(sample: dict, size, problems: ProblemLog) -> tuple[np.ndarray, np.ndarray] | None:
    """(image, mask) of one evaluation sample at `size`, or None (counted) when it is unusable.
    A mask stored at another size than its image is resized to the image first (counted)."""
    data = _image_bytes(sample)
    if data is None:
        problems.add("missing_image", _where(sample))
        return None
    if MASK_EXTENSION not in sample:
        problems.add("missing_mask", _where(sample))
        return None
    try:
        image = to_rgb8(open_image(data))
    except Exception as e:
        problems.add("undecodable_image", _where(sample), e)
        return None
    try:
        mask = mask_grey(open_image(sample[MASK_EXTENSION]))
    except Exception as e:
        problems.add("undecodable_mask", _where(sample), e)
        return None
    if mask.size != image.size:
        problems.add("mask_resized", _where(sample), f"mask {mask.size} vs image {image.size} (W, H)")
        mask = mask.resize(image.size, Image.BILINEAR)
    return (np.asarray(_fit(image, size, Image.BICUBIC)),
            np.asarray(_fit(mask, size, Image.BILINEAR)) >= 128)


def eval_batches(url: str, batch_size: int, resolution: int | None = None, limit: int | None = None,
                 problems: ProblemLog | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(images float [B, 3, H, W] in [-1, 1], masks float [B, 1, H, W] in {0, 1}) over the first
    `limit` usable samples (all by default); the last batch may be smaller. Unusable samples are
    skipped and counted in `problems`."""
    manifest = read_manifest(url)
    if not manifest.get("has_masks"):
        raise DatasetError(f"{url} has no ground-truth masks for every image; evaluation needs them")
    problems = problems if problems is not None else ProblemLog()
    size = _image_size(url, manifest, resolution)
    total = manifest["num_samples"] if limit is None else min(limit, manifest["num_samples"])
    images, masks, seen = [], [], 0
    for sample in itertools.chain.from_iterable(_read_shard(u, problems) for u in shard_urls(url, manifest)):
        if seen == total:
            break
        pair = _eval_pair(sample, size, problems)
        if pair is None:
            continue
        images.append(pair[0])
        masks.append(pair[1])
        seen += 1
        if len(images) == batch_size or seen == total:
            yield _to_tensor(images), torch.from_numpy(np.stack(masks)[:, None]).float()
            images, masks = [], []
    if images:  # damaged samples made the set shorter than the manifest says
        yield _to_tensor(images), torch.from_numpy(np.stack(masks)[:, None]).float()
