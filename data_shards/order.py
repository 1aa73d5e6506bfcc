"""Which samples each training reader reads, in which order, and where a checkpoint resumes it:
index arithmetic over the manifest's per-shard sample counts. Nothing here opens a tar or builds a
DataLoader; the one step that reads, a shard's samples in stored order, is a function the caller
passes in (reader.py passes its tar reader, the tests a list), so the order is testable on its own.

The split between ranks and loader workers (shards_for_rank): each of the world_size * num_workers
"slots" gets whole shards when there are enough of them, and shares the leftover shards sample by
sample, so every slot sees a disjoint, near-equal part of the data. Each slot cycles through its
part forever, so every rank yields the same (unbounded) number of full batches and DDP never waits
on a rank that ran dry.

The order is a pure function of (seed, rank, role, position), so a resumed run sees exactly the
samples and flips an uninterrupted one would have:
- A "role" is one of the W = max(1, num_workers) slots of a rank. Its part has a fixed number of
  samples per pass ("epoch"), known from the manifest without reading a shard.
- Pass e reads the role's shards in an order permuted by rng(seed, rank, role, e). Each sample
  gets an index in the pass from the manifest counts (a shard shorter than listed leaves a gap;
  samples beyond the listed count are not read), and the indices are cut into windows of
  SHUFFLE_WINDOW. Each window is permuted, and each of its samples draws its hflip bit, from
  rng(seed, rank, role, e, window). Windows span shard boundaries, which mixes neighbouring shards.
- A role's "position" counts the samples it has yielded before decoding, across passes:
  pass * (listed samples a pass) + the sample's index in the permuted pass. Samples later found
  unusable count too, and so do the gaps of a short shard. Seeking to a position reads no sample
  it does not need: shards wholly before its window are skipped by their counts, samples before
  the window are read but dropped, and so is the head of the permuted window.
- torch's DataLoader hands batches out round robin from worker 0, so after k consumed batches the
  next comes from role k % W: on resume, worker i plays role (i + k) % W (role_of) from that
  role's saved position. LoaderCursor records k and the positions.
Exact resume holds for data that reads the same way every time (intact or deterministically
truncated shards) and the same rank, world_size and num_workers. With another num_workers every
role reads another part: start_cursor restarts the roles at a pass none of them had begun.
"""
from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

import numpy as np

SHUFFLE_WINDOW = 500    # samples (still encoded bytes) permuted together; spans neighbouring shards
WINDOW_TAG = 1 << 22    # keeps window seeds apart from shard-order seeds of the same numbers

logger = logging.getLogger("data_shards")

Read = Callable[[str], Iterable]   # a shard URL -> its samples in stored order


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


def kept_below(x: int, rem: int, mod: int) -> int:
    """How many of the global indices 0 .. x-1 are == rem (mod `mod`)."""
    return max(0, (x - rem + mod - 1) // mod)


class Shard(NamedTuple):
    """One shard of a role's part: keep the samples whose global index % mod == rem, of the
    `listed` ones the manifest counts (global indices offset .. offset + listed - 1); `kept` of
    them are this role's."""
    url: str
    rem: int
    mod: int
    offset: int
    listed: int
    kept: int

    def index(self, i: int) -> int | None:
        """Where the shard's i-th stored sample falls among this role's `kept` ones; None when it
        is another role's."""
        if (self.offset + i) % self.mod != self.rem:
            return None
        return kept_below(self.offset + i, self.rem, self.mod) - kept_below(self.offset, self.rem, self.mod)


def role_part(urls: list[str], counts: list[int], rank: int, world_size: int, role: int,
              num_roles: int) -> list[Shard]:
    """The shards (rank, role) reads, given every shard's URL and listed sample count, so a pass's
    length and each sample's index in it are known without opening a shard."""
    listed = dict(zip(urls, counts))
    offsets = dict(zip(urls, itertools.accumulate([0] + list(listed.values()))))
    part = []
    for u, rem, mod in shards_for_rank(urls, rank, world_size, role, num_roles):
        kept = kept_below(offsets[u] + listed[u], rem, mod) - kept_below(offsets[u], rem, mod)
        part.append(Shard(u, rem, mod, offsets[u], listed[u], kept))
    return part


def role_parts(urls: list[str], counts: list[int], rank: int, world_size: int, num_roles: int) -> list[list[Shard]]:
    """The parts of all `num_roles` roles of one rank."""
    return [role_part(urls, counts, rank, world_size, r, num_roles) for r in range(num_roles)]


def pass_length(part: list[Shard]) -> int:
    """Samples a pass over `part` lists: the positions one pass advances."""
    return sum(s.kept for s in part)


# ---------------------------------------------------------------------------------------------
# one role's order

def seed_of(*parts: int) -> int:
    """One 64-bit seed from any integers (negative ones and the step included)."""
    return int(np.random.SeedSequence([p % 2**63 for p in parts]).generate_state(1)[0])


def pass_seed(seed: int, rank: int, role: int, epoch: int) -> int:
    """The seed of one pass: its shard order, and (with the window number) its windows."""
    return seed_of(seed, rank, role, epoch)


def shard_order(seed: int, n: int) -> list[int]:
    """The order a pass with seed `seed` reads the n shards of its part in."""
    return np.random.default_rng(seed).permutation(n).tolist()


def window_order(seed: int, window: int, size: int) -> tuple[list[int], list[bool]]:
    """(permutation, flips) of window `window` of a pass with seed `seed`: its t-th output is its
    sample perm[t], flipped when flips[t]."""
    rng = np.random.default_rng(seed_of(seed, window, WINDOW_TAG))
    perm, flips = rng.permutation(size), rng.random(size) < 0.5
    return perm.tolist(), flips.tolist()


def read_pass(part: list[Shard], order: list[int], start: int, read: Read) -> Iterator[tuple[int, object]]:
    """(index in the pass, sample) over `part` in shard order `order`, from index `start` on.
    Indices come from the manifest counts: a shard shorter than listed leaves a gap rather than
    shifting every later sample, and shards wholly before `start` are not read."""
    base = 0
    for j in order:
        shard = part[j]
        if base + shard.kept > start:
            for i, sample in enumerate(read(shard.url)):
                if i >= shard.listed:  # beyond the manifest: its index would collide with the next shard's
                    break
                index = shard.index(i)
                if index is not None and base + index >= start:  # earlier ones are read (a tar streams) only
                    yield base + index, sample
        base += shard.kept


def shuffle_windows(indexed: Iterator[tuple[int, object]], length: int, seed: int,
                    size: int) -> Iterator[tuple[int, object, bool]]:
    """(index, sample, flip) with each window of `size` indices permuted: the output's t-th index
    of window w is w * size + t, holding the sample perm_w[t] of that window. `indexed` comes in
    rising index order; `length` is the pass's listed length and `seed` its pass_seed."""
    for window, items in itertools.groupby(indexed, key=lambda item: item[0] // size):
        first = window * size
        held = {index - first: sample for index, sample in items}
        perm, flips = window_order(seed, window, min(size, length - first))
        for t, k in enumerate(perm):
            if k in held:  # absent: the shard was shorter than listed
                yield first + t, held[k], flips[t]


class EmptyPass(Exception):
    """A whole pass over a role's part met no sample: its shards hold none of what they list."""


def role_samples(part: list[Shard], start: int, seed: int, rank: int, role: int, read: Read,
                 window: int = SHUFFLE_WINDOW) -> Iterator[tuple[int, bool, object]]:
    """(position, flip, sample) of one role from position `start` on, pass after pass, forever.
    EmptyPass when a pass begun at its start yields nothing (it would otherwise spin)."""
    length = pass_length(part)
    epoch, offset = divmod(start, length)
    while True:
        seed_e = pass_seed(seed, rank, role, epoch)
        first = offset - offset % window  # start reading at the window holding `offset`
        indexed = read_pass(part, shard_order(seed_e, len(part)), first, read)
        yielded = 0
        for index, sample, flip in shuffle_windows(indexed, length, seed_e, window):
            if index >= offset:
                yielded += 1
                yield epoch * length + index, flip, sample
        if yielded == 0 and offset == 0:
            raise EmptyPass(f"rank {rank}, loader role {role}")
        epoch, offset = epoch + 1, 0


# ---------------------------------------------------------------------------------------------
# resuming

def role_of(worker: int, batches: int, num_roles: int) -> int:
    """The role loader worker `worker` plays after `batches` consumed batches: the DataLoader's
    next batch comes from worker 0, and it has to be role batches % W's."""
    return (worker + batches) % num_roles


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

    def update(self, batch) -> None:
        """Record a consumed batch: anything with the `role` that made it and the `position` after
        its last sample (reader.TrainBatch)."""
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


def start_cursor(resume: dict | None, urls: list[str], counts: list[int], rank: int, world_size: int,
                 num_roles: int) -> LoaderCursor:
    """Where the roles start: the saved cursor when it has as many roles as this loader; else
    (num_workers changed, so every role reads another part) each role at the start of the first
    pass that no saved role had begun, which neither repeats nor skips much but is not exact."""
    cursor = LoaderCursor(num_roles)
    if resume is None:
        return cursor
    cursor.load_state_dict(resume)
    if len(cursor.positions) == num_roles:
        return cursor
    saved = [pass_length(p) for p in role_parts(urls, counts, rank, world_size, len(cursor.positions))]
    epoch = max((-(-pos // n) for pos, n in zip(cursor.positions, saved) if n), default=0)
    logger.warning("resuming the training loader with %d worker role(s) instead of %d: the data order "
                   "restarts at epoch %d and is not the one an uninterrupted run would have seen",
                   num_roles, len(cursor.positions), epoch)
    cursor.positions = [epoch * pass_length(p) for p in role_parts(urls, counts, rank, world_size, num_roles)]
    return cursor
