"""Through the loader, on tar files: train_loader reads in the order order.py computes, and a loader
resumed from a saved LoaderCursor gives, bit for bit, the batches an uninterrupted one gives next
(decoded images, flips, unusable samples and odd shards included). And a set without usable data
fails fast with a one-line DatasetError instead of spinning forever. The order's arithmetic on its
own, without tar files: test_order.py."""
from __future__ import annotations

import io
import itertools
import re
import time
import traceback

import numpy as np
import pytest
import torch
from PIL import Image

from data_shards import decode, order
from data_shards.index import DatasetError, read_manifest, shard_urls
from data_shards.order import LoaderCursor
from data_shards.problems import MAX_CONSECUTIVE_UNUSABLE
from data_shards.reader import TrainBatch, check_usable, eval_batches, train_loader
from data_shards.writer import write_synthetic
from fake_datasets import write_set

RES = 8


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    """31 samples in shards of 7 (7, 7, 7, 7, 3): with 2 ranks x 2 workers, four shards are dealt
    whole and the last is split by sample, so roles have 7 or 8 samples a pass."""
    url = str(tmp_path_factory.mktemp("order") / "set")
    write_synthetic(url, 31, RES, 3, seed=4, samples_per_shard=7, progress=False)
    return url


def take(loader, n: int, cursor: LoaderCursor | None = None) -> list[TrainBatch]:
    it = iter(loader)
    batches = []
    for batch in itertools.islice(it, n):
        if cursor is not None:
            cursor.update(batch)
        batches.append(batch)
    del it  # stops the loader's workers
    return batches


def saved(cursor: LoaderCursor, tmp_path) -> dict:
    """The cursor state as a checkpoint holds it: through torch.save and a weights_only load."""
    torch.save({"data": cursor.state_dict()}, tmp_path / "ckpt.pt")
    return torch.load(tmp_path / "ckpt.pt", weights_only=True)["data"]


def assert_same(got: list[TrainBatch], want: list[TrainBatch]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.keys == w.keys and (g.role, g.position) == (w.role, w.position)
        assert torch.equal(g.images, w.images)


# ---------------------------------------------------------------------------------------------
# exact resume

@pytest.mark.parametrize("window", [3, order.SHUFFLE_WINDOW])  # several windows a pass, and one
@pytest.mark.parametrize("workers", [0, 2])
def test_resume_continues_the_uninterrupted_order(small_set, tmp_path, monkeypatch, workers, window):
    monkeypatch.setattr(order, "SHUFFLE_WINDOW", window)
    k, more, batch = 7, 9, 3   # 7 % 2 == 1; 7 batches are more than a pass of every role
    for rank in range(2):
        make = lambda **kw: train_loader(small_set, batch, rank=rank, world_size=2, num_workers=workers,  # noqa: E731
                                         seed=5, **kw)
        cursor = make().cursor
        whole = take(make(), k + more)
        assert [b.role for b in whole] == [i % max(1, workers) for i in range(k + more)]
        for b in whole[:k]:
            cursor.update(b)
        per_pass = 16 if workers == 0 else 8   # the most samples a role of this rank has per pass
        assert min(cursor.positions) > per_pass  # the saved positions lie past an epoch boundary
        resumed = make(resume=saved(cursor, tmp_path))
        assert resumed.cursor.state_dict() == cursor.state_dict()
        assert_same(take(resumed, more), whole[k:])
        # and a second resume from the cursor the resumed run kept
        second = LoaderCursor(workers)
        second.load_state_dict(saved(cursor, tmp_path))
        tail = take(make(resume=second.state_dict()), 4, second)
        assert_same(tail, whole[k:k + 4])
        assert_same(take(make(resume=saved(second, tmp_path)), 3), whole[k + 4:k + 7])


def test_resume_counts_unusable_samples_in_the_position(tmp_path, monkeypatch):
    """Samples dropped at decode still advance the position, so a resume lands after them."""
    monkeypatch.setattr(order, "SHUFFLE_WINDOW", 4)
    good = [{"__key__": f"g{i}", "image.png": png(i * 9)} for i in range(14)]
    bad = [{"__key__": f"bad{i}", "json": b"{}"} for i in range(6)]
    url = write_set(tmp_path / "mixed", [good[:7] + bad[:3], good[7:] + bad[3:]], has_masks=False)
    make = lambda **kw: train_loader(url, 3, num_workers=0, seed=2, **kw)  # noqa: E731
    whole = take(make(), 16)
    assert sum(sum(b.problems) for b in whole) > 0
    for k in (1, 4, 9):
        cursor = LoaderCursor(0)
        for b in whole[:k]:
            cursor.update(b)
        assert_same(take(make(resume=cursor.state_dict()), 16 - k), whole[k:])


def test_shards_other_than_listed_resume_exactly(tmp_path, monkeypatch):
    """A shard shorter than manifest.json says leaves a gap in the indices and one longer is read
    up to its listed count, so neither shifts the order of the rest: a resume at any sample,
    including one that skips the short shard unread, continues exactly."""
    monkeypatch.setattr(order, "SHUFFLE_WINDOW", 4)
    samples = [{"__key__": f"s{i:02d}", "image.png": png(i * 7)} for i in range(22)]
    extra = {"__key__": "extra", "image.png": png(1)}
    url = write_set(tmp_path / "odd", [samples[:12] + [extra], samples[12:15], samples[15:]], has_masks=False,
                    listed=[12, 6, 7])   # shard 0 holds one more than listed, shard 1 three fewer
    make = lambda **kw: train_loader(url, 1, num_workers=0, seed=9, **kw)  # noqa: E731
    whole = take(make(), 66)
    keys = [k for b in whole for k in b.keys]
    assert "extra" not in keys and sorted(keys[:22]) == sorted(s["__key__"] for s in samples)
    assert whole[21].position <= 25 < whole[22].position  # a pass spans the 25 listed, 3 of them missing
    for k in range(1, 63):
        cursor = LoaderCursor(0)
        for b in whole[:k]:
            cursor.update(b)
        assert_same(take(make(resume=cursor.state_dict()), 3), whole[k:k + 3])


def test_seek_decodes_no_skipped_image(small_set, monkeypatch):
    """A resume deep into a pass reads the samples before it but decodes only what it yields."""
    monkeypatch.setattr(order, "SHUFFLE_WINDOW", 4)
    decoded = []
    real = decode.decode_image
    monkeypatch.setattr(decode, "decode_image", lambda data, size: decoded.append(1) or real(data, size))
    whole = take(train_loader(small_set, 2, num_workers=0, seed=3), 22)
    cursor = LoaderCursor(0)
    for b in whole[:21]:
        cursor.update(b)
    assert cursor.positions == [42]  # 42 - 31 = 11: inside the third window of the second pass
    decoded.clear()
    assert_same(take(train_loader(small_set, 2, num_workers=0, seed=3, resume=cursor.state_dict()), 1), whole[21:])
    assert len(decoded) == 2


def test_resume_with_other_worker_count_restarts_at_a_fresh_epoch(small_set):
    cursor = LoaderCursor(2)
    for b in take(train_loader(small_set, 3, num_workers=2, seed=1), 13):
        cursor.update(b)
    assert cursor.positions == [21, 18]  # both roles in their second pass (16 and 15 samples a pass)
    loader = train_loader(small_set, 3, num_workers=0, seed=1, resume=cursor.state_dict())
    assert loader.cursor.batches == 13 and loader.cursor.positions == [2 * 31]  # the third pass
    batches = take(loader, 11, loader.cursor)
    assert sorted([k for b in batches for k in b.keys][:31]) == ["%08d" % i for i in range(31)]
    assert loader.cursor.positions == [2 * 31 + 33]


def test_cursor_rejects_batches_of_another_loader(small_set):
    batches = take(train_loader(small_set, 3, num_workers=2, seed=1), 2)
    cursor = LoaderCursor(2)
    cursor.update(batches[0])
    with pytest.raises(ValueError, match="expected role 1"):
        cursor.update(batches[0])


# ---------------------------------------------------------------------------------------------
# the order

def test_the_loader_reads_in_the_order_that_order_py_computes(small_set, monkeypatch):
    """Each role's keys, in the batches of a loader with 2 workers on 2 ranks, are the samples
    order.role_samples gives for it, read from the manifest's keys alone."""
    monkeypatch.setattr(order, "SHUFFLE_WINDOW", 3)
    manifest = read_manifest(small_set)
    urls, counts = shard_urls(small_set, manifest), [s["num_samples"] for s in manifest["shards"]]
    first = dict(zip(urls, itertools.accumulate([0] + counts)))
    stored = lambda url: [{"__key__": "%08d" % (first[url] + i)} for i in range(counts[urls.index(url)])]  # noqa: E731
    for rank in range(2):
        batches = take(train_loader(small_set, 3, rank=rank, world_size=2, num_workers=2, seed=5), 12)
        for role, part in enumerate(order.role_parts(urls, counts, rank, 2, 2)):
            got = [k for b in batches if b.role == role for k in b.keys]
            want = itertools.islice(order.role_samples(part, 0, 5, rank, role, stored, 3), len(got))
            assert got == [sample["__key__"] for _, _, sample in want]


def test_flips_are_about_half_and_restored(tmp_path):
    url = str(tmp_path / "set")
    write_synthetic(url, 100, RES, 3, seed=6, samples_per_shard=25, progress=False)
    stored = {k: x for k, x in zip(["%08d" % i for i in range(100)], torch.cat([x for x, _ in eval_batches(url, 50)]))}
    batches = take(train_loader(url, 10, num_workers=0, seed=8), 20)
    flipped = []
    for b in batches:
        for key, image in zip(b.keys, b.images):
            assert torch.equal(image, stored[key]) or torch.equal(image, stored[key].flip(-1))
            flipped.append(not torch.equal(image, stored[key]))
    assert 0.35 < np.mean(flipped) < 0.65
    # each pass shows every sample once, and a sample's flip is drawn anew each pass
    keys = [k for b in batches for k in b.keys]
    by_pass = [dict(zip(keys[i:i + 100], flipped[i:i + 100])) for i in (0, 100)]
    assert len(by_pass[0]) == len(by_pass[1]) == 100 and by_pass[0] != by_pass[1]
    cursor = LoaderCursor(0)
    for b in batches[:13]:
        cursor.update(b)
    assert_same(take(train_loader(url, 10, num_workers=0, seed=8, resume=cursor.state_dict()), 7), batches[13:])


def test_creating_the_iterator_leaves_the_global_rng_alone(small_set):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    for workers in (0, 2):
        it = iter(train_loader(small_set, 3, num_workers=workers, seed=0))
        next(it)
        del it
    assert torch.equal(torch.get_rng_state(), before)


# ---------------------------------------------------------------------------------------------
# unusable data fails fast

def png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((RES, RES, 3), value % 256, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def unusable_set(tmp_path, n: int, usable_at: int | None = None, name: str = "unusable") -> str:
    """n samples whose image sits under "picture.jpg", which the reader does not look for;
    sample `usable_at` has a proper image.png."""
    samples = [{"__key__": "%06d" % i, "picture.jpg": b"jpeg bytes", "mask.png": png(255), "json": b"{}"}
               for i in range(n)]
    if usable_at is not None:
        samples[usable_at] = {"__key__": "good", "image.png": png(50), "mask.png": png(255)}
    return write_set(tmp_path / name, [samples[i:i + 100] for i in range(0, n, 100)])


def raises_fast(fn, match: str) -> str:
    """The one-line message of the DatasetError fn raises within a minute. The traceback's frames
    are cleared: torch re-raises a worker's error from a frame that holds it, a reference cycle
    that keeps the failed loader's workers until the garbage collector, whose shutdown of them
    (queues already finalized) then waits 5 s per worker, in whichever test runs next."""
    t0 = time.monotonic()
    try:
        fn()
    except DatasetError as e:
        message = str(e)
        traceback.clear_frames(e.__traceback__)
    else:
        pytest.fail("no DatasetError")
    assert time.monotonic() - t0 < 60
    assert re.search(match, message), message
    assert "\n" not in message
    return message


@pytest.mark.timeout(120)
@pytest.mark.parametrize("workers", [0, 2])
def test_train_loader_gives_up_on_a_set_without_usable_samples(tmp_path, workers):
    url = unusable_set(tmp_path, 60)  # 1000 tries in a row take many passes over it
    message = raises_fast(lambda: next(iter(train_loader(url, 4, num_workers=workers))),
                          f"{MAX_CONSECUTIVE_UNUSABLE} samples tried in a row, none usable")
    assert "fields seen: json, mask.png, picture.jpg" in message and "image.png" in message
    assert url in message


@pytest.mark.timeout(120)
def test_eval_and_check_usable_give_up_on_a_set_without_usable_samples(tmp_path):
    big, small = unusable_set(tmp_path, 1200, name="big"), unusable_set(tmp_path, 30, name="small")
    message = raises_fast(lambda: list(eval_batches(big, 8)), "1000 samples tried in a row")
    assert "fields seen: json, mask.png, picture.jpg" in message and "mask.png" in message.split("looks for")[1]
    raises_fast(lambda: list(eval_batches(small, 8)), "30 samples tried in a row.*fields seen: json, mask.png, picture")
    raises_fast(lambda: check_usable(big), "64 samples tried in a row.*fields seen: json, mask.png, picture.jpg")
    raises_fast(lambda: check_usable(small, limit=10), "10 samples tried in a row")
    raises_fast(lambda: check_usable(small, limit=100), "30 samples tried in a row")


@pytest.mark.timeout(120)
def test_one_usable_sample_among_many_keeps_going(tmp_path):
    url = unusable_set(tmp_path, 400, usable_at=250)  # gaps between it stay below 1000
    batches = take(train_loader(url, 1, num_workers=0, seed=0), 4)
    assert [b.keys for b in batches] == [["good"]] * 4
    assert check_usable(url, limit=300) is None and check_usable(url, limit=300, masks=True) is None
    assert [len(x) for x, _ in eval_batches(url, 4)] == [1]
    raises_fast(lambda: check_usable(url), "64 samples tried")  # not among the first 64


def test_empty_shards_are_named(tmp_path):
    url = write_set(tmp_path / "empty", [[]], listed=[3])
    (tmp_path / "zero").mkdir()
    zero = write_set(tmp_path / "zero" / "set", [[]], listed=[3])
    (tmp_path / "zero" / "set" / "shard-000000.tar").write_bytes(b"")  # not even the tar's end blocks
    for u in (url, zero):
        for fn in (lambda: next(iter(train_loader(u, 2, num_workers=0))), lambda: check_usable(u),
                   lambda: list(eval_batches(u, 2))):
            message = raises_fast(fn, "1 of its 1 shard.s. (is|are) empty")
            assert "shard-000000.tar" in message and "lists 3 samples" in message
    # one empty shard among good ones: the loader reads on without it
    good = [{"__key__": f"g{i}", "image.png": png(i)} for i in range(4)]
    mixed = write_set(tmp_path / "mixed", [good, []], listed=[4, 3], has_masks=False)
    assert len(take(train_loader(mixed, 2, num_workers=0), 6)) == 6
    check_usable(mixed)
