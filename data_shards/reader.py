"""Stream shard sets: an endless, sharded training loader whose order a checkpoint can restore
exactly, a finite, ordered evaluation reader, and `check_usable`, which a driver calls before any
worker starts. Shards are opened through io.py (fsspec), so a local folder, file:// and s3:// all
work; each DataLoader worker opens its own connections after the fork.

What a URL names is index.py's business: a set written by writer.py (manifest.json beside
shard-NNNNNN.tar), or plain WebDataset tars as users hold them (a folder of *.tar, a brace pattern
such as s3://bucket/photos-{000000..000199}.tar, a single .tar), indexed from their tar headers
when no manifest.json lists them; everything below works from the manifest either way. A sample's
image is read from the first of IMAGE_KEYS it has (image.png/jpg/jpeg/webp as writer.py stores
it, or jpg, jpeg, png, webp as img2dataset and TarWriter scripts do), its mask from the first of
MASK_KEYS (mask.png, mask.jpg, mask.jpeg, mask.webp); other fields (json, txt, ...) are ignored.
Images of any size are centre-cropped to square and resized to the requested resolution.

Bad data never crashes a run: a truncated shard, a sample without an image, an image or mask that
does not decode, or a mask of another size than its image is skipped (or, for the mask, resized)
per sample, counted by kind in a ProblemLog and warned about; the training loader hands each
batch's new counts to the caller (TrainBatch.problems) so they reach TensorBoard. Grayscale,
palette, RGBA and 16-bit images are converted to 8-bit RGB. A set with no usable data fails fast
instead: MAX_CONSECUTIVE_UNUSABLE unusable samples in a row (or an empty shard where every sample
should be) raise a one-line DatasetError that names the fields found and the fields looked for.

How samples are split between ranks and loader workers (see shards_for_rank): each of the
world_size * num_workers "slots" gets whole shards when there are enough of them, and shares the
leftover shards sample by sample, so every slot sees a disjoint, near-equal part of the data. Each
slot then cycles through its part forever, so every rank yields the same (unbounded) number of full
batches and DDP never waits on a rank that ran dry.

Training order is a pure function of (seed, rank, role, position), so a resumed run sees exactly
the samples and flips an uninterrupted one would have:
- A "role" is one of the W = max(1, num_workers) slots of this rank. Its part has a fixed number
  of samples per pass ("epoch"), known from the manifest (manifest.json or an index) without
  reading a shard.
- Epoch e reads the role's shards in an order permuted by rng(seed, rank, role, e). Each sample
  gets an index in the epoch from the manifest counts (a shard that is shorter than listed leaves
  a gap; samples beyond the listed count are not read), and the indices are cut into windows of
  SHUFFLE_WINDOW. Each window is permuted, and each of its samples draws its hflip bit, from
  rng(seed, rank, role, e, window). Windows span shard boundaries, which mixes neighbouring shards.
- A role's "position" counts the pre-decode samples it has yielded across epochs: epoch * (listed
  samples a pass) + the sample's index in the permuted pass, so samples later found unusable count
  too, and so do the gaps of a short shard. Every TrainBatch carries its role and the position
  after its last sample. Seeking to a position reads no image it does not need: whole shards before the window
  are skipped by their manifest counts, samples before it in its first shard are read but not
  decoded, and the head of the permuted window is dropped.
- torch's DataLoader hands batches out round robin from worker 0, so after k consumed batches the
  next comes from role k % W: on resume, worker i plays role (i + k) % W from that role's saved
  position. LoaderCursor records k and the positions. The loader has its own torch.Generator, so
  creating its iterator draws nothing from the trainer's global RNG.
Exact resume holds for data that reads the same way every time (intact or deterministically
truncated shards) and the same rank, world_size and num_workers; see train_loader for the rest.
"""
from __future__ import annotations

import itertools
import logging
import tarfile
import zlib
from collections import Counter
from collections.abc import Iterator
from functools import partial
from typing import NamedTuple

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from webdataset.tariterators import group_by_keys, tar_file_expander

from data_shards.images import mask_grey, open_image, to_rgb8

# read_manifest, shard_urls and DatasetError live in index.py (which decodes no sample); callers
# import them from here, as before
from data_shards.index import (
    EVAL_WANTED,
    IMAGE_KEYS,
    IMAGE_WANTED,
    MASK_KEYS,
    DatasetError,
    read_manifest,
    shard_urls,
)
from data_shards.io import open_url

SHUFFLE_WINDOW = 500    # samples (still encoded bytes) permuted together; spans neighbouring shards
MAX_CONSECUTIVE_UNUSABLE = 1000   # unusable samples in a row before a reader gives up on the set
CHECK_SAMPLES = 64      # how many samples check_usable reads at most
PROBLEM_KINDS = ("truncated_shard", "missing_image", "undecodable_image", "missing_mask", "undecodable_mask",
                 "mask_resized")
WARN_FIRST, WARN_EVERY = 5, 1000    # per kind and process: the first few, then every 1000th

logger = logging.getLogger("data_shards")


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


class _Streak:
    """Unusable samples in a row, with what they held: a reader that meets `limit` of them is
    looking at a set it cannot use (images under another field name, say) and raises, instead of
    spinning through it forever."""

    def __init__(self, url: str, wanted: str, limit: int):
        self.url, self.wanted, self.limit = url, wanted, limit
        self.good()

    def good(self) -> None:
        self.count, self.kinds, self.fields = 0, Counter(), set()

    def bad(self, sample: dict, kind: str) -> None:
        self.count += 1
        self.kinds[kind] += 1
        if len(self.fields) < 50:  # field names repeat; the bound only guards against odd sets
            self.fields.update(k for k in sample if not k.startswith("__"))
        if self.count >= self.limit:
            raise self.error()

    def error(self) -> DatasetError:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.kinds.items()))
        fields = ", ".join(sorted(self.fields)) or "none"
        return DatasetError(f"{self.url}: {self.count} samples tried in a row, none usable ({kinds}); "
                            f"fields seen: {fields}; the reader looks for {self.wanted}")


class TrainBatch(NamedTuple):
    images: torch.Tensor            # float [B, 3, H, W] in [-1, 1]
    keys: list[str]                 # sample keys, for tests and debugging
    problems: tuple[int, ...]       # bad samples met since the previous batch, per PROBLEM_KINDS
    role: int                       # the loader role (0 .. W-1) that made this batch
    position: int                   # that role's pre-decode position after this batch's last sample


class LoaderCursor:
    """Where a training loader stands, for a checkpoint: how many batches were consumed and, per
    role, the position after its latest consumed batch. Call `update` with every batch the trainer
    takes, save `state_dict()` (plain ints, fine for torch.load(weights_only=True)), and pass it
    to train_loader(resume=...) to continue with the very next batch. One cursor per rank: each
    rank reads its own part, so every rank's state has to be saved (they differ in positions).

    `train_loader(...).cursor` is a cursor already set to where that loader starts (it also covers
    a resume with another number of workers); LoaderCursor(num_workers) is the same for a fresh
    start."""

    def __init__(self, num_workers: int = 1):
        self.batches = 0
        self.positions = [0] * max(1, num_workers)

    def update(self, batch: TrainBatch) -> None:
        want = self.batches % len(self.positions)
        if batch.role != want:  # a cursor that does not belong to this loader would save garbage
            raise ValueError(f"batch {self.batches} came from loader role {batch.role}, expected role {want}: "
                             "this cursor does not follow this loader (use train_loader(...).cursor)")
        self.positions[batch.role] = int(batch.position)
        self.batches += 1

    def state_dict(self) -> dict:
        return {"batches": self.batches, "positions": list(self.positions)}

    def load_state_dict(self, state: dict) -> None:
        batches, positions = int(state["batches"]), [int(p) for p in state["positions"]]
        if batches < 0 or not positions or min(positions) < 0:
            raise ValueError(f"not a loader cursor state: {state!r}")
        self.batches, self.positions = batches, positions


# ---------------------------------------------------------------------------------------------
# the split between ranks and loader workers

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


class _Shard(NamedTuple):
    """One shard of a role's part: keep the samples whose global index % mod == rem, of the
    `listed` ones manifest.json counts (global indices offset .. offset + listed - 1); `kept`
    of them are this role's."""
    url: str
    rem: int
    mod: int
    offset: int
    listed: int
    kept: int


def _kept_below(x: int, rem: int, mod: int) -> int:
    """How many of the global indices 0 .. x-1 are == rem (mod `mod`)."""
    return max(0, (x - rem + mod - 1) // mod)


def _role_part(url: str, manifest: dict, rank: int, world_size: int, role: int, num_roles: int) -> list[_Shard]:
    """The shards (role, rank) reads, with the manifest's counts, so a pass's length and each
    sample's index in it are known without opening a shard."""
    urls = shard_urls(url, manifest)
    listed = {u: int(s["num_samples"]) for u, s in zip(urls, manifest["shards"])}
    offsets = dict(zip(urls, itertools.accumulate([0] + list(listed.values()))))
    part = []
    for u, rem, mod in shards_for_rank(urls, rank, world_size, role, num_roles):
        kept = _kept_below(offsets[u] + listed[u], rem, mod) - _kept_below(offsets[u], rem, mod)
        part.append(_Shard(u, rem, mod, offsets[u], listed[u], kept))
    return part


# ---------------------------------------------------------------------------------------------
# reading and decoding

def _read_shard(url: str, problems: ProblemLog) -> Iterator[dict]:
    """Samples of one shard in stored order: {"__key__", "__url__", one entry per field, e.g. "jpg"}.
    A truncated or corrupt tar yields what precedes the damage, then counts one problem."""
    try:
        with open_url(url) as stream:
            yield from group_by_keys(tar_file_expander([{"url": url, "stream": stream}]))
    except FileNotFoundError:
        raise DatasetError(f"{url} is listed in manifest.json but missing") from None
    except (tarfile.TarError, EOFError, zlib.error) as e:
        problems.add("truncated_shard", url, e.args[0] if e.args else e)  # webdataset appends objects to args


def _empty_shards(urls: list[str]) -> list[str]:
    """Those of `urls` that hold no sample at all (an empty or unreadable tar); for error messages."""
    return [u for u in urls if next(_read_shard(u, ProblemLog()), None) is None]


def _no_sample_error(what: str, urls: list[str], listed: int) -> DatasetError:
    empty = _empty_shards(urls)
    if empty:
        names = ", ".join(u.rsplit("/", 1)[-1] for u in empty[:5]) + (", ..." if len(empty) > 5 else "")
        return DatasetError(f"{what}: {len(empty)} of its {len(urls)} shard(s) are empty (no samples in the tar, "
                            f"though manifest.json lists {listed} samples): {names} in {urls[0].rsplit('/', 1)[0]}")
    return DatasetError(f"{what}: no sample in its {len(urls)} shard(s) though manifest.json lists {listed}: "
                        "the shards are cut off before them")


def _image_bytes(sample: dict) -> bytes | None:
    return next((sample[k] for k in IMAGE_KEYS if k in sample), None)


def _mask_bytes(sample: dict) -> bytes | None:
    return next((sample[k] for k in MASK_KEYS if k in sample), None)


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
    if manifest.get("indexed"):  # counted from tar headers: the images' sizes are unknown
        raise DatasetError(f"{url} is indexed plain WebDataset shards whose image sizes are unknown; "
                           "pass a resolution to resize them")
    lo, hi = manifest.get("min_resolution"), manifest.get("max_resolution")
    if lo is not None and lo != hi:
        raise DatasetError(f"images in {url} range from {lo} to {hi} pixels; pass a resolution to resize them")
    return None


def _where(sample: dict) -> str:
    return f"sample {sample.get('__key__')} in {sample.get('__url__')}"


def _unusable(kind: str, sample: dict, problems: ProblemLog, streak: _Streak, detail: object = "") -> None:
    problems.add(kind, _where(sample), detail)
    streak.bad(sample, kind)


def _train_image(sample: dict, size, problems: ProblemLog, streak: _Streak) -> np.ndarray | None:
    """The training image of a sample at `size`, or None (counted) when it has none that decodes."""
    data = _image_bytes(sample)
    if data is None:
        return _unusable("missing_image", sample, problems, streak,
                         f"has only {sorted(k for k in sample if k[:2] != '__')}")
    try:
        image = _decode_image(data, size)
    except Exception as e:  # PIL raises many types for damaged files; any of them skips the sample
        return _unusable("undecodable_image", sample, problems, streak, e)
    streak.good()
    return image


def _eval_pair(sample: dict, size, problems: ProblemLog, streak: _Streak) -> tuple[np.ndarray, np.ndarray] | None:
    """(image, mask) of one evaluation sample at `size`, or None (counted) when it is unusable.
    A mask stored at another size than its image is resized to the image first (counted)."""
    data = _image_bytes(sample)
    if data is None:
        return _unusable("missing_image", sample, problems, streak)
    mask_data = _mask_bytes(sample)
    if mask_data is None:
        return _unusable("missing_mask", sample, problems, streak)
    try:
        image = to_rgb8(open_image(data))
    except Exception as e:
        return _unusable("undecodable_image", sample, problems, streak, e)
    try:
        mask = mask_grey(open_image(mask_data))
    except Exception as e:
        return _unusable("undecodable_mask", sample, problems, streak, e)
    streak.good()
    if mask.size != image.size:
        problems.add("mask_resized", _where(sample), f"mask {mask.size} vs image {image.size} (W, H)")
        mask = mask.resize(image.size, Image.BILINEAR)
    return (np.asarray(_fit(image, size, Image.BICUBIC)),
            np.asarray(_fit(mask, size, Image.BILINEAR)) >= 128)


def check_usable(url: str, resolution: int | None = None, limit: int = CHECK_SAMPLES, masks: bool = False) -> None:
    """Fail early, in the driver, on a set the readers could not use: read the first samples in
    stored order through the training decode path (the evaluation one with masks=True) and raise
    the readers' one-line DatasetError unless one of the first `limit` is usable, or when the
    shards hold no sample at all. Returns at the first usable sample."""
    manifest = read_manifest(url)
    size = _image_size(url, manifest, resolution)
    urls = shard_urls(url, manifest)
    streak = _Streak(url, EVAL_WANTED if masks else IMAGE_WANTED, limit=max(1, min(limit, manifest["num_samples"])))
    decode = _eval_pair if masks else _train_image
    problems = ProblemLog()
    for sample in itertools.chain.from_iterable(_read_shard(u, problems) for u in urls):
        if decode(sample, size, problems, streak) is not None:
            return
    if streak.count:  # the set is shorter than the manifest says, and nothing in it is usable
        raise streak.error()
    raise _no_sample_error(url, urls, manifest["num_samples"])


# ---------------------------------------------------------------------------------------------
# training: endless, sharded, in an order a checkpoint can restore

def _worker() -> tuple[int, int]:
    info = torch.utils.data.get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([p % 2**63 for p in parts]).generate_state(1)[0])


_WINDOW_TAG = 1 << 22   # keeps window seeds apart from shard-order seeds of the same numbers


def _pass(part: list[_Shard], order, start: int, problems: ProblemLog) -> Iterator[tuple[int, dict]]:
    """(index in the pass, sample) over `part` in shard order `order`, from index `start` on.
    Indices come from the manifest counts: a shard shorter than listed leaves a gap rather than
    shifting every later sample, and shards wholly before `start` are not opened."""
    base = 0
    for j in order:
        s = part[j]
        if base + s.kept > start:
            for i, sample in enumerate(_read_shard(s.url, problems)):
                if i >= s.listed:  # beyond the manifest: its index would collide with the next shard's
                    break
                if (s.offset + i) % s.mod == s.rem:
                    index = base + _kept_below(s.offset + i, s.rem, s.mod) - _kept_below(s.offset, s.rem, s.mod)
                    if index >= start:  # earlier ones are read (a tar streams) but never decoded
                        yield index, sample
        base += s.kept


def _windows(indexed: Iterator[tuple[int, dict]], length: int, seed: int,
             size: int) -> Iterator[tuple[int, dict, bool]]:
    """(index, sample, flip) with each window of `size` indices permuted: the output's t-th
    index of window w is w * size + t, holding the sample perm_w[t] of that window. `length` is
    the pass's listed length; `seed` is fixed per (seed, rank, role, epoch)."""
    window, held = None, {}
    for index, sample in itertools.chain(indexed, [(None, None)]):
        w = None if index is None else index // size
        if w != window and window is not None:
            yield from _permuted(window, held, length, seed, size)
            held = {}
        window = w
        if index is not None:
            held[index - w * size] = sample


def _permuted(window: int, held: dict, length: int, seed: int, size: int) -> Iterator[tuple[int, dict, bool]]:
    first = window * size
    size = min(size, length - first)
    rng = np.random.default_rng(_seed(seed, window, _WINDOW_TAG))
    perm, flips = rng.permutation(size), rng.random(size) < 0.5
    for t, k in enumerate(perm.tolist()):
        if k in held:  # absent: the shard was shorter than listed
            yield first + t, held[k], bool(flips[t])


def _role_samples(part: list[_Shard], start: int, seed: int, rank: int, role: int, problems: ProblemLog,
                  window: int = SHUFFLE_WINDOW) -> Iterator[dict]:
    """The samples of one role from position `start` on, pass after pass, each with its
    "__position__" and "__flip__"."""
    length = sum(s.kept for s in part)
    epoch, offset = divmod(start, length)
    while True:
        order = np.random.default_rng(_seed(seed, rank, role, epoch)).permutation(len(part))
        first = offset - offset % window  # start reading at the window holding `offset`
        yielded = 0
        passed = _pass(part, order, first, problems)
        for index, sample, flip in _windows(passed, length, _seed(seed, rank, role, epoch), window):
            if index >= offset:
                sample["__position__"], sample["__flip__"] = epoch * length + index, flip
                yielded += 1
                yield sample
        if yielded == 0 and offset == 0:  # would otherwise spin forever without yielding
            raise _no_sample_error(f"rank {rank}, loader role {role}", [s.url for s in part], length)
        epoch, offset = epoch + 1, 0


def _samples(parts: list[list[_Shard]], starts: list[int], first_role: int, seed: int, rank: int,
             problems: ProblemLog, window: int) -> Iterator[dict]:
    """First pipeline stage, run inside each loader worker: worker i plays role
    (i + first_role) % W, so batches keep coming from the roles in turn across a resume."""
    worker, num_workers = _worker()
    if num_workers != len(parts):
        raise RuntimeError(f"loader built for {len(parts)} workers runs with {num_workers}")
    role = (worker + first_role) % num_workers
    for sample in _role_samples(parts[role], starts[role], seed, rank, role, problems, window):
        sample["__role__"] = role
        yield sample


def _decode(src, url: str, size, hflip: bool, problems: ProblemLog, limit: int):
    streak = _Streak(url, IMAGE_WANTED, limit)
    for sample in src:
        image = _train_image(sample, size, problems, streak)
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
            yield TrainBatch(_to_tensor([b[0] for b in batch]), [b[1] for b in batch], problems.take(),
                             batch[-1][2], batch[-1][3] + 1)
            batch = []


def _start(resume: dict | None, parts: list[list[_Shard]], old_parts) -> LoaderCursor:
    """Where the roles start: the saved cursor when it has as many roles as this loader; else
    (num_workers changed, so every role reads another part) each role at the start of the first
    epoch that no saved role had begun, which neither repeats nor skips much but is not exact."""
    cursor = LoaderCursor(len(parts))
    if resume is None:
        return cursor
    cursor.load_state_dict(resume)
    if len(cursor.positions) == len(parts):
        return cursor
    old = old_parts(len(cursor.positions))
    lengths = [sum(s.kept for s in p) for p in old]
    epoch = max((-(-pos // n) for pos, n in zip(cursor.positions, lengths) if n), default=0)
    logger.warning("resuming the training loader with %d worker role(s) instead of %d: the data order "
                   "restarts at epoch %d and is not the one an uninterrupted run would have seen",
                   len(parts), len(cursor.positions), epoch)
    cursor.positions = [epoch * sum(s.kept for s in p) for p in parts]
    return cursor


def train_loader(url: str, batch_size: int, rank: int = 0, world_size: int = 1, num_workers: int = 1, seed: int = 0,
                 resolution: int | None = None, hflip: bool = True, resume: dict | None = None) -> wds.WebLoader:
    """Endless full TrainBatches for one rank. num_workers=0 reads in-process.

    The order is a function of (seed, rank, role, position) only (see the module docstring): keep
    `seed` fixed for the whole run (do not add the step to it) and pass the saved LoaderCursor
    state as `resume` to continue with the very batch an uninterrupted run would have given next,
    bit for bit, when rank, world_size and num_workers are unchanged:

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
    parts = [_role_part(url, manifest, rank, world_size, r, num_roles) for r in range(num_roles)]
    for role, part in enumerate(parts):
        if not sum(s.kept for s in part):
            raise DatasetError(f"{url}: rank {rank}, loader role {role} gets no samples: its "
                               f"{len(part)} shard(s) list none in manifest.json")
    cursor = _start(resume, parts, lambda n: [_role_part(url, manifest, rank, world_size, r, n) for r in range(n)])
    size = _image_size(url, manifest, resolution)
    problems = ProblemLog()  # copied into each loader worker, so each counts its own
    # Module constants are read here, not in the workers, so they hold however workers start.
    pipeline = wds.DataPipeline(
        partial(_samples, parts, list(cursor.positions), cursor.batches % num_roles, seed, rank,
                problems=problems, window=SHUFFLE_WINDOW),
        partial(_decode, url=url, size=size, hflip=hflip, problems=problems, limit=MAX_CONSECUTIVE_UNUSABLE),
        partial(_batches, batch_size=batch_size, problems=problems),
    )
    # Its own generator: a DataLoader otherwise draws its base seed from the global torch RNG at
    # every iter(), which would shift the trainer's random stream between a run and its resume.
    generator = torch.Generator().manual_seed(_seed(seed, rank, 1 << 23))
    loader = wds.WebLoader(pipeline, batch_size=None, num_workers=num_workers, generator=generator)
    loader.cursor = cursor
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
    size = _image_size(url, manifest, resolution)
    every = shard_urls(url, manifest)
    n = len(every)
    urls = every[part * n // parts:(part + 1) * n // parts]
    listed = sum(int(s["num_samples"]) for s in manifest["shards"][part * n // parts:(part + 1) * n // parts])
    streak = _Streak(url, EVAL_WANTED if masks else IMAGE_WANTED, MAX_CONSECUTIVE_UNUSABLE)
    total = listed if limit is None else min(limit, listed)
    images, gts, names, seen = [], [], [], 0
    for sample in itertools.chain.from_iterable(_read_shard(u, problems) for u in urls):
        if seen == total:
            break
        if masks:
            usable = _eval_pair(sample, size, problems, streak)
        else:
            image = _train_image(sample, size, problems, streak)
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
    gt = torch.from_numpy(np.stack(masks)[:, None]).float() if masks[0] is not None else None
    return _to_tensor(images), gt, keys
