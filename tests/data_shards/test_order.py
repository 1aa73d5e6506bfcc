"""The training order as index arithmetic (data_shards/order.py), without a tar file: a "shard" is a
name and a list of (shard, index) samples, read through the function order.py takes. Every sample
once a pass across ranks and roles, a resume from any position continues the very sequence, a
resume onto another worker count or world size starts a fresh order instead of replaying one.
The loader's side (tar files, decoding, DataLoader workers): test_order_and_resume.py."""
from __future__ import annotations

import itertools
from typing import NamedTuple

import numpy as np
import pytest

from data_shards import order
from data_shards.order import LoaderCursor, pass_length, role_of, role_part, role_parts, role_samples, shards_for_rank


class FakeSet:
    """Shards listing `listed` samples each and holding `stored` (default: as listed); reading one
    gives (shard number, index in the shard) per stored sample and notes which shard was opened."""

    def __init__(self, listed, stored=None):
        self.urls = [f"shard-{j}" for j in range(len(listed))]
        self.listed = list(listed)
        self.stored = dict(zip(self.urls, stored or listed))
        self.opened = []

    def read(self, url: str) -> list[tuple[int, int]]:
        self.opened.append(url)
        return [(self.urls.index(url), i) for i in range(self.stored[url])]

    def samples(self) -> list[tuple[int, int]]:
        return [(j, i) for j, n in enumerate(self.listed) for i in range(n)]

    def part(self, rank=0, world=1, role=0, roles=1) -> list[order.Shard]:
        return role_part(self.urls, self.listed, rank, world, role, roles)

    def stream(self, start=0, seed=0, rank=0, world=1, role=0, roles=1, window=3, part_role=None):
        """(position, flip, sample) of (rank, role) from `start`; `part_role` reads another role's
        part (the role then only changes the seeds)."""
        part = self.part(rank, world, role if part_role is None else part_role, roles)
        return role_samples(part, start, seed, rank, role, self.read, window)


def take(stream, n: int) -> list:
    return list(itertools.islice(stream, n))


def keys(items) -> list:
    return [sample for _, _, sample in items]


# ---------------------------------------------------------------------------------------------
# the split: every sample once a pass, across ranks and roles

def test_shards_for_rank_deals_every_sample_once():
    urls = [f"s{i}" for i in range(7)]
    for world, workers in [(1, 1), (2, 1), (2, 2), (3, 4)]:
        parts = [shards_for_rank(urls, r, world, w, workers) for w in range(workers) for r in range(world)]
        assert parts == [shards_for_rank(urls, r, world, w, workers) for w in range(workers) for r in range(world)]
        # every (shard, sample index) is kept by exactly one slot: check with 5 samples per shard
        kept = [(u, i) for part in parts for u, rem, mod in part for i in range(5)
                if (urls.index(u) * 5 + i) % mod == rem]
        assert sorted(kept) == sorted((u, i) for u in urls for i in range(5))


@pytest.mark.parametrize("listed,stored", [
    ((7, 7, 7, 7, 3), None), ((13,), None), ((4, 9, 1, 6, 6, 2, 8), None),
    ((4, 9, 1, 6, 6, 2, 8), (4, 9, 1, 6, 6, 2, 5)),   # the last shard, split by sample, cut short
])
@pytest.mark.parametrize("world,roles", [(1, 1), (2, 1), (2, 2), (3, 4)])
def test_every_sample_once_a_pass_across_ranks_and_roles(listed, stored, world, roles):
    fake = FakeSet(listed, stored)
    first_passes = []
    for rank, role in itertools.product(range(world), range(roles)):
        n = pass_length(fake.part(rank, world, role, roles))
        got = list(itertools.takewhile(lambda item: item[0] < 3 * n,
                                       fake.stream(seed=7, rank=rank, world=world, role=role, roles=roles)))
        positions = [p for p, _, _ in got]
        assert positions == sorted(set(positions))   # positions rise, pass after pass
        passes = [[sample for p, _, sample in got if p // n == e] for e in range(3)]
        assert sorted(passes[0]) == sorted(passes[1]) == sorted(passes[2])  # each pass: the same part
        first_passes += passes[0]
    stored_samples = [(j, i) for j, n in enumerate(stored or listed) for i in range(n)]
    assert sorted(first_passes) == stored_samples  # disjoint, and nothing left out


# ---------------------------------------------------------------------------------------------
# resuming a role at a position

def test_a_resume_at_any_position_continues_the_same_sequence():
    """Shard 1 holds two fewer samples than listed (a gap in the positions), shard 2 one more (never
    read): from any position, including one in the gap, the role yields what the uninterrupted
    sequence yields from there, flips included."""
    fake = FakeSet((5, 8, 3), stored=(5, 6, 4))
    whole = take(fake.stream(seed=4), 70)   # over four passes of 16 listed positions
    assert (2, 3) not in keys(whole) and len(set(keys(whole[:14]))) == 14
    for start in range(whole[-6][0]):
        want = [item for item in whole if item[0] >= start][:5]
        assert take(fake.stream(start, seed=4), 5) == want, start


def test_short_and_long_shards_leave_the_other_samples_in_place():
    complete = take(FakeSet((5, 8, 3)).stream(seed=2, window=4), 48)
    odd = take(FakeSet((5, 8, 3), stored=(5, 6, 4)).stream(seed=2, window=4), 42)
    assert odd == [item for item in complete if item[2] not in {(1, 6), (1, 7)}]
    # a shard one over its count before an empty one: the extra sample never takes the empty one's place
    fake = FakeSet((5, 3, 4), stored=(6, 0, 4))
    for seed in range(6):
        got = keys(take(fake.stream(seed=seed), 3 * 9))
        assert sorted(set(got)) == [(0, i) for i in range(5)] + [(2, i) for i in range(4)]


def test_a_seek_opens_no_shard_before_its_window():
    fake = FakeSet((4, 4, 4, 4))
    whole = take(fake.stream(seed=1, window=2), 16)
    fake.opened.clear()
    assert take(fake.stream(13, seed=1, window=2), 3) == whole[13:16]
    last = order.shard_order(order.pass_seed(1, 0, 0, 0), 4)[-1]   # positions 12..15 are its samples
    assert fake.opened == [fake.urls[last]]


def test_a_part_without_samples_raises_instead_of_spinning():
    for start in (0, 2):
        with pytest.raises(order.EmptyPass, match="rank 0, loader role 0"):
            next(FakeSet((3,), stored=(0,)).stream(start))


# ---------------------------------------------------------------------------------------------
# what the order depends on

def test_order_depends_on_seed_role_and_epoch():
    fake = FakeSet((7, 7, 7, 7, 3))
    a = keys(take(fake.stream(roles=2), 2 * 16))   # role 0 of 2 reads 16 samples a pass
    first, second = a[:16], a[16:]
    assert sorted(first) == sorted(second) and first != second  # each pass reshuffled
    assert first != sorted(first)                                # not the stored order
    assert keys(take(fake.stream(roles=2), 32)) == a
    assert keys(take(fake.stream(seed=1, roles=2), 32)) != a
    assert keys(take(fake.stream(role=1, part_role=0, roles=2), 32)) != a  # same part, another role


def test_shard_order_and_windows_each_depend_on_seed_role_and_epoch():
    # windows of one sample: only the shard order moves
    fake = FakeSet((7, 7, 7, 7, 3))
    shard_order = lambda items: [j for j, _ in itertools.groupby(j for j, _ in keys(items))]  # noqa: E731
    base = take(fake.stream(window=1), 62)
    orders = [shard_order(base[:31]), shard_order(base[31:])]
    assert orders[0] != orders[1] and sorted(orders[0]) == [0, 1, 2, 3, 4]
    assert shard_order(take(fake.stream(seed=1, window=1), 31)) != orders[0]
    assert shard_order(take(fake.stream(role=1, part_role=0, roles=1, window=1), 31)) != orders[0]
    # one shard: only the window permutation moves
    one = FakeSet((20,))
    w = keys(take(one.stream(window=500), 40))
    assert w[:20] != w[20:] and sorted(w[:20]) == sorted(w[20:])
    assert keys(take(one.stream(seed=1, window=500), 20)) != w[:20]
    assert keys(take(one.stream(role=1, part_role=0, window=500), 20)) != w[:20]


def test_windows_permute_only_within_themselves():
    fake = FakeSet((6, 9, 5))
    in_shard_order = keys(take(fake.stream(seed=3, window=1), 20))
    shuffled = keys(take(fake.stream(seed=3, window=4), 20))
    assert shuffled != in_shard_order
    for w in range(0, 20, 4):
        assert sorted(shuffled[w:w + 4]) == sorted(in_shard_order[w:w + 4])


def test_windows_span_shard_boundaries():
    """Role 0 of 2 reads shard 0 (4 samples) and 2 of shard 2, 6 a pass: with windows of 3, one
    window holds samples of both shards whichever shard comes first."""
    fake = FakeSet((4, 4, 4))
    for seed in range(4):
        got = keys(take(fake.stream(seed=seed, roles=2), 6))
        assert sorted(got) == [(0, 0), (0, 1), (0, 2), (0, 3), (2, 0), (2, 2)]
        assert any(len({j for j, _ in got[w:w + 3]}) == 2 for w in (0, 3))


def test_flips_are_about_half_and_drawn_anew_each_pass():
    fake = FakeSet((25, 25, 25, 25))
    got = take(fake.stream(seed=8, window=500), 200)
    assert 0.35 < np.mean([flip for _, flip, _ in got]) < 0.65
    by_pass = [{sample: flip for _, flip, sample in got[e * 100:(e + 1) * 100]} for e in range(2)]
    assert len(by_pass[0]) == len(by_pass[1]) == 100 and by_pass[0] != by_pass[1]


# ---------------------------------------------------------------------------------------------
# the cursor across loader workers

class Batch(NamedTuple):
    role: int
    position: int
    samples: list


def loader(fake: FakeSet, cursor: LoaderCursor, n: int, batch: int = 3, seed: int = 5) -> list[Batch]:
    """What a DataLoader with one worker per role hands out after `cursor`: worker w plays
    role_of(w, cursor.batches, W) from that role's position, and batches come round robin from
    worker 0."""
    roles = len(cursor.positions)
    parts = role_parts(fake.urls, fake.listed, 0, 1, roles)
    streams = []
    for worker in range(roles):
        role = role_of(worker, cursor.batches, roles)
        streams.append((role, role_samples(parts[role], cursor.positions[role], seed, 0, role, fake.read, 3)))
    batches = []
    for j in range(n):
        role, stream = streams[j % roles]
        items = take(stream, batch)
        batches.append(Batch(role, items[-1][0] + 1, keys(items)))
    return batches


@pytest.mark.parametrize("roles", [1, 2, 3])
def test_a_cursor_resumes_the_batches_an_uninterrupted_loader_gives_next(roles):
    fake = FakeSet((7, 7, 7, 7, 3))
    whole = loader(fake, LoaderCursor(roles), 20)
    assert [b.role for b in whole] == [j % roles for j in range(20)]
    for k in range(1, 17):
        cursor = LoaderCursor(roles)
        for b in whole[:k]:
            cursor.update(b)
        saved = LoaderCursor(roles)
        saved.load_state_dict(cursor.state_dict())
        assert loader(fake, saved, 20 - k) == whole[k:], k


def test_a_cursor_refuses_batches_and_states_not_its_own():
    cursor = LoaderCursor(2)
    cursor.update(Batch(0, 3, []))
    with pytest.raises(ValueError, match="batch 1 came from loader role 0, expected role 1"):
        cursor.update(Batch(0, 6, []))
    for state in ({"batches": -1, "positions": [0]}, {"batches": 0, "positions": []},
                  {"batches": 0, "positions": [4, -1]}):
        with pytest.raises(ValueError, match="not a loader cursor state"):
            LoaderCursor().load_state_dict(state)


def test_a_resume_onto_another_worker_count_starts_a_pass_no_role_had_begun(caplog):
    fake = FakeSet((7, 7, 7, 7, 3))
    saved = {"batches": 13, "positions": [21, 18]}  # two roles of 16 and 15 samples, both in their second pass
    start = lambda state, roles: order.start_cursor(state, fake.urls, fake.listed, 0, 1, roles)  # noqa: E731
    assert start(saved, 2).state_dict() == saved      # the same worker count: exactly where it was
    assert start(None, 3).state_dict() == {"batches": 0, "positions": [0, 0, 0]}
    with caplog.at_level("WARNING", logger="data_shards"):
        cursor = start(saved, 3)
    lengths = [pass_length(p) for p in role_parts(fake.urls, fake.listed, 0, 1, 3)]
    assert cursor.batches == 13 and cursor.positions == [2 * n for n in lengths]   # the third pass
    assert "with 3 worker role(s) instead of 2: the data order restarts at epoch 2" in caplog.text
    # a saved position right at a pass boundary: that pass had not begun, so it is the one to start
    assert start({"batches": 4, "positions": [32, 15]}, 1).positions == [2 * 31]


def test_a_resume_onto_another_world_size_starts_a_fresh_order():
    """A checkpoint of another number of ranks holds no cursor for this one: each rank starts at
    position 0 with the run's seed moved by the step (cluster/worker.py). The new ranks still read
    every sample once a pass, and none begins as a rank of the interrupted run began, whereas the
    unmoved seed on the old world size replays the run's start exactly."""
    fake = FakeSet((7, 7, 7, 7, 3))

    def first_passes(world: int, seed: int) -> list[list]:
        return [keys(take(fake.stream(seed=seed, rank=r, world=world), pass_length(fake.part(r, world))))
                for r in range(world)]

    before = first_passes(2, 5)
    assert first_passes(2, 5) == before
    for world in (1, 3):
        after = first_passes(world, 5 + 300)
        assert sorted(k for rank in after for k in rank) == fake.samples()
        assert not any(a[:4] == b[:4] for a in after for b in before)
