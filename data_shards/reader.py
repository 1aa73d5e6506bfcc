"""Stream shard sets: an endless, sharded training loader whose order a checkpoint can restore
exactly (train_loader), finite readers of every sample once in stored order (eval_batches,
image_batches), and `check_usable`, which a driver calls before any worker starts. Shards are
opened through io.py (fsspec), so a local folder, file:// and s3:// all work; each DataLoader
worker opens its own connections after the fork.

What a URL names is index.py's business: a set written by writer.py (manifest.json beside
shard-NNNNNN.tar), or plain WebDataset tars as users hold them (a folder of *.tar, a brace pattern
such as s3://bucket/photos-{000000..000199}.tar, a single .tar), indexed from their tar headers
when no manifest.json lists them; everything here works from the manifest either way. Which
sample each rank and loader worker reads, in which order, and how a resume continues it, is
order.py's index arithmetic; a sample becomes tensors in decode.py.

Bad data never crashes a run: a truncated shard, a sample without an image, an image or mask that
does not decode, or a mask of another size than its image is skipped (or, for the mask, resized)
per sample, counted by kind in a ProblemLog (problems.py) and warned about; the training loader
hands each batch's new counts to the caller (TrainBatch.problems) so they reach TensorBoard. A set
with no usable data fails fast instead: MAX_CONSECUTIVE_UNUSABLE unusable samples in a row (or an
empty shard where every sample should be) raise a one-line DatasetError that names the fields
found and the fields looked for.
"""
from __future__ import annotations

import itertools
import tarfile
import zlib
from collections.abc import Iterator
from functools import partial
from typing import NamedTuple

import torch
import webdataset as wds
from webdataset.tariterators import group_by_keys, tar_file_expander

from data_shards import order
from data_shards.decode import Size, eval_pair, images_tensor, masks_tensor, train_image
from data_shards.index import EVAL_WANTED, IMAGE_WANTED, DatasetError, read_manifest, shard_urls
from data_shards.io import open_url
from data_shards.problems import MAX_CONSECUTIVE_UNUSABLE, ProblemLog, UnusableStreak

CHECK_SAMPLES = 64      # how many samples check_usable reads at most
LOADER_TAG = 1 << 23    # keeps the DataLoader's generator seed apart from the order's seeds


class TrainBatch(NamedTuple):
    images: torch.Tensor            # float [B, 3, H, W] in [-1, 1]
    keys: list[str]                 # sample keys, for tests and debugging
    problems: tuple[int, ...]       # bad samples met since the previous batch, per PROBLEM_KINDS
    role: int                       # the loader role (0 .. W-1) that made this batch
    position: int                   # that role's pre-decode position after this batch's last sample


# ---------------------------------------------------------------------------------------------
# shards and the set's plan

def read_shard(url: str, problems: ProblemLog) -> Iterator[dict]:
    """Samples of one shard in stored order: {"__key__", "__url__", one entry per field, e.g. "jpg"}.
    A truncated or corrupt tar yields what precedes the damage, then counts one problem."""
    try:
        with open_url(url) as stream:
            yield from group_by_keys(tar_file_expander([{"url": url, "stream": stream}]))
    except FileNotFoundError:
        raise DatasetError(f"{url} is listed in manifest.json but missing") from None
    except (tarfile.TarError, EOFError, zlib.error) as e:
        problems.add("truncated_shard", url, e.args[0] if e.args else e)  # webdataset appends objects to args


def _no_sample_error(what: str, urls: list[str], listed: int) -> DatasetError:
    """The error for shards that yield no sample at all: names the empty ones, if any are."""
    empty = [u for u in urls if next(read_shard(u, ProblemLog()), None) is None]
    if empty:
        names = ", ".join(u.rsplit("/", 1)[-1] for u in empty[:5]) + (", ..." if len(empty) > 5 else "")
        return DatasetError(f"{what}: {len(empty)} of its {len(urls)} shard(s) are empty (no samples in the tar, "
                            f"though manifest.json lists {listed} samples): {names} in {urls[0].rsplit('/', 1)[0]}")
    return DatasetError(f"{what}: no sample in its {len(urls)} shard(s) though manifest.json lists {listed}: "
                        "the shards are cut off before them")


def _target_size(url: str, manifest: dict, resolution: int | None) -> Size:
    """Target (H, W): square `resolution`, else the stored size, which must then be uniform."""
    if resolution is not None:
        return int(resolution), int(resolution)
    if manifest.get("indexed"):  # counted from tar headers: the images' sizes are unknown
        raise DatasetError(f"{url} is indexed plain WebDataset shards whose image sizes are unknown; "
                           "pass a resolution to resize them")
    lo, hi = manifest.get("min_resolution"), manifest.get("max_resolution")
    if lo is not None and lo != hi:
        raise DatasetError(f"images in {url} range from {lo} to {hi} pixels; pass a resolution to resize them")
    return None


def check_usable(url: str, resolution: int | None = None, limit: int = CHECK_SAMPLES, masks: bool = False) -> None:
    """Fail early, in the driver, on a set the readers could not use: read the first samples in
    stored order through the training decode path (the evaluation one with masks=True) and raise
    the readers' one-line DatasetError unless one of the first `limit` is usable, or when the
    shards hold no sample at all. Returns at the first usable sample."""
    manifest = read_manifest(url)
    size = _target_size(url, manifest, resolution)
    urls = shard_urls(url, manifest)
    streak = UnusableStreak(url, EVAL_WANTED if masks else IMAGE_WANTED,
                            limit=max(1, min(limit, manifest["num_samples"])))
    decode = eval_pair if masks else train_image
    problems = ProblemLog()
    for sample in itertools.chain.from_iterable(read_shard(u, problems) for u in urls):
        if decode(sample, size, problems, streak) is not None:
            return
    if streak.count:  # the set is shorter than the manifest says, and nothing in it is usable
        raise streak.error()
    raise _no_sample_error(url, urls, manifest["num_samples"])


# ---------------------------------------------------------------------------------------------
# training: endless, sharded, in an order a checkpoint can restore (order.py)

def _worker() -> tuple[int, int]:
    info = torch.utils.data.get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def _samples(parts: list[list[order.Shard]], starts: list[int], batches: int, seed: int, rank: int,
             problems: ProblemLog, window: int) -> Iterator[dict]:
    """First pipeline stage, run inside each loader worker: this worker's role's samples from its
    start on, each with its "__position__", "__flip__" and "__role__"."""
    worker, num_workers = _worker()
    if num_workers != len(parts):
        raise RuntimeError(f"loader built for {len(parts)} workers runs with {num_workers}")
    role = order.role_of(worker, batches, num_workers)
    part = parts[role]
    read = partial(read_shard, problems=problems)
    try:
        for position, flip, sample in order.role_samples(part, starts[role], seed, rank, role, read, window):
            sample["__position__"], sample["__flip__"], sample["__role__"] = position, flip, role
            yield sample
    except order.EmptyPass:
        urls = [s.url for s in part]
        raise _no_sample_error(f"rank {rank}, loader role {role}", urls, order.pass_length(part)) from None


def _decode(src, url: str, size: Size, hflip: bool, problems: ProblemLog, limit: int):
    streak = UnusableStreak(url, IMAGE_WANTED, limit)
    for sample in src:
        image = train_image(sample, size, problems, streak)
        if image is None:
            continue
        if hflip and sample["__flip__"]:
            image = image[:, ::-1]
        yield image, sample["__key__"], sample["__role__"], sample["__position__"]


def _batches(src, batch_size: int, problems: ProblemLog) -> Iterator[TrainBatch]:
    """Full batches only. Not wds.batched, which pulls (and decodes) one sample ahead of the
    batch it yields."""
    batch = []
    for item in src:
        batch.append(item)
        if len(batch) == batch_size:
            yield TrainBatch(images_tensor([b[0] for b in batch]), [b[1] for b in batch], problems.take(),
                             batch[-1][2], batch[-1][3] + 1)
            batch = []


def train_loader(url: str, batch_size: int, rank: int = 0, world_size: int = 1, num_workers: int = 1, seed: int = 0,
                 resolution: int | None = None, hflip: bool = True, resume: dict | None = None) -> wds.WebLoader:
    """Endless full TrainBatches for one rank. num_workers=0 reads in-process.

    The order is a function of (seed, rank, role, position) only (see order.py): keep `seed` fixed
    for the whole run (do not add the step to it) and pass the saved LoaderCursor state as
    `resume` to continue with the very batch an uninterrupted run would have given next, bit for
    bit, when rank, world_size and num_workers are unchanged:

        loader = train_loader(url, batch, rank, world, workers, seed, resume=saved.get("data"))
        cursor = loader.cursor                   # where this loader starts
        for batch in loader:
            cursor.update(batch)                 # every batch the trainer takes
            ...                                  # checkpoint: {"data": cursor.state_dict(), ...}

    With another num_workers the roles read other parts, so every role restarts at the first
    epoch boundary after the furthest saved position (logged; not exact, but nothing crashes).
    Exactness needs shards that read the same way every time; shards shorter or longer than
    manifest.json says keep it (gaps, and a cut at the listed count), a changed set does not.
    """
    manifest = read_manifest(url)
    num_roles = max(1, num_workers)
    if manifest["num_samples"] < world_size * num_roles:
        raise DatasetError(f"{url} has {manifest['num_samples']} samples, fewer than the "
                           f"{world_size * num_roles} readers (world_size x num_workers)")
    urls, counts = shard_urls(url, manifest), [int(s["num_samples"]) for s in manifest["shards"]]
    parts = order.role_parts(urls, counts, rank, world_size, num_roles)
    for role, part in enumerate(parts):
        if not order.pass_length(part):
            raise DatasetError(f"{url}: rank {rank}, loader role {role} gets no samples: its "
                               f"{len(part)} shard(s) list none in manifest.json")
    cursor = order.start_cursor(resume, urls, counts, rank, world_size, num_roles)
    size = _target_size(url, manifest, resolution)
    problems = ProblemLog()  # copied into each loader worker, so each counts its own
    # Module constants are read here, not in the workers, so they hold however workers start.
    pipeline = wds.DataPipeline(
        partial(_samples, parts, list(cursor.positions), cursor.batches, seed, rank,
                problems=problems, window=order.SHUFFLE_WINDOW),
        partial(_decode, url=url, size=size, hflip=hflip, problems=problems, limit=MAX_CONSECUTIVE_UNUSABLE),
        partial(_batches, batch_size=batch_size, problems=problems),
    )
    # Its own generator: a DataLoader otherwise draws its base seed from the global torch RNG at
    # every iter(), which would shift the trainer's random stream between a run and its resume.
    generator = torch.Generator().manual_seed(order.seed_of(seed, rank, LOADER_TAG))
    loader = wds.WebLoader(pipeline, batch_size=None, num_workers=num_workers, generator=generator)
    loader.cursor = cursor  # a LoaderCursor at where this loader starts
    return loader


# ---------------------------------------------------------------------------------------------
# evaluation: every sample once, in stored order

def eval_batches(url: str, batch_size: int, resolution: int | None = None, limit: int | None = None,
                 problems: ProblemLog | None = None, part: int = 0, parts: int = 1, keys: bool = False) -> Iterator[tuple]:
    """(images float [B, 3, H, W] in [-1, 1], masks float [B, 1, H, W] in {0, 1}), plus the
    samples' keys with keys=True, over the first `limit` usable samples (all by default); the last
    batch may be smaller. part/parts: only the part-th of `parts` contiguous runs of shards, so
    parts read one after the other give the whole set in stored order (a part may be empty).
    Unusable samples are skipped and counted in `problems`; MAX_CONSECUTIVE_UNUSABLE of them in a
    row, a set (or part) without a usable sample, or shards without any sample raise DatasetError."""
    manifest = read_manifest(url)
    if not manifest.get("has_masks"):
        raise DatasetError(f"{url} has no ground-truth masks for every image; evaluation needs them")
    for images, masks, names in _ordered_batches(url, manifest, batch_size, resolution, limit, problems, part, parts,
                                                 masks=True):
        yield (images, masks, names) if keys else (images, masks)


def image_batches(url: str, batch_size: int, resolution: int | None = None, limit: int | None = None,
                  problems: ProblemLog | None = None) -> Iterator[torch.Tensor]:
    """Images only (float [B, 3, H, W] in [-1, 1]) of the first `limit` usable samples in stored
    order, masks or not: the real side of FID."""
    for images, _, _ in _ordered_batches(url, read_manifest(url), batch_size, resolution, limit, problems, 0, 1,
                                         masks=False):
        yield images


def _ordered_batches(url: str, manifest: dict, batch_size: int, resolution: int | None, limit: int | None,
                     problems: ProblemLog | None, part: int, parts: int, masks: bool) -> Iterator[tuple]:
    """(images, masks or None, keys) batches of every usable sample once, in stored order."""
    if not 0 <= part < parts:
        raise ValueError(f"bad part {part} of {parts}")
    problems = problems if problems is not None else ProblemLog()
    size = _target_size(url, manifest, resolution)
    every = shard_urls(url, manifest)
    n = len(every)
    urls = every[part * n // parts:(part + 1) * n // parts]
    listed = sum(int(s["num_samples"]) for s in manifest["shards"][part * n // parts:(part + 1) * n // parts])
    streak = UnusableStreak(url, EVAL_WANTED if masks else IMAGE_WANTED, MAX_CONSECUTIVE_UNUSABLE)
    total = listed if limit is None else min(limit, listed)
    images, gts, names, seen = [], [], [], 0
    for sample in itertools.chain.from_iterable(read_shard(u, problems) for u in urls):
        if seen == total:
            break
        if masks:
            usable = eval_pair(sample, size, problems, streak)
        else:
            image = train_image(sample, size, problems, streak)
            usable = None if image is None else (image, None)
        if usable is None:
            continue
        images.append(usable[0])
        gts.append(usable[1])
        names.append(sample["__key__"])
        seen += 1
        if len(images) == batch_size or seen == total:
            yield _eval_batch(images, gts, names)
            images, gts, names = [], [], []
    if images:  # damaged samples made the set shorter than the manifest says
        yield _eval_batch(images, gts, names)
    # A part may hold only damaged samples while the set as a whole is fine: only the whole set
    # (parts == 1) fails here; split readers leave it to their caller to judge the sum.
    if seen == 0 and total > 0 and parts == 1:
        raise streak.error() if streak.count else _no_sample_error(url, urls, listed)


def _eval_batch(images: list, masks: list, keys: list) -> tuple:
    return images_tensor(images), masks_tensor(masks) if masks[0] is not None else None, keys
