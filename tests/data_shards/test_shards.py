"""data_shards: synthetic scenes, shard writing, the streaming readers and their errors."""
from __future__ import annotations

import colorsys
import hashlib
import itertools
import json
import os
import re
import signal
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from data_shards.index import DatasetError, read_manifest
from data_shards.io import (StorageError, join_url, list_tree, list_urls, move_tree, open_url, read_bytes, url_exists,
                            write_bytes)
from data_shards.reader import eval_batches, train_loader
from data_shards.synthetic import render_sample, synthetic_samples
from data_shards.writer import write_shards, write_synthetic


def _hue(rgb) -> float:
    return colorsys.rgb_to_hsv(*(np.asarray(rgb, dtype=float) / 255))[0]


def _hue_dist(a: float, b: float) -> float:
    d = abs(a - b) % 1.0
    return min(d, 1 - d)


# ---------------------------------------------------------------------------------------------
# synthetic

def test_synthetic_is_a_function_of_seed_and_index():
    a = list(synthetic_samples(6, 32, 4, seed=3))
    b = list(synthetic_samples(6, 32, 4, seed=3))
    tail = list(synthetic_samples(2, 32, 4, seed=3, start_index=4))
    other = list(synthetic_samples(6, 32, 4, seed=4))
    assert [s["key"] for s in a] == ["%08d" % i for i in range(6)]
    for x, y in zip(a, b):
        assert np.array_equal(x["image"], y["image"]) and np.array_equal(x["mask"], y["mask"])
        assert x["meta"] == y["meta"]
    for x, y in zip(a[4:], tail):
        assert x["key"] == y["key"] and np.array_equal(x["image"], y["image"])
    assert not any(np.array_equal(x["image"], y["image"]) for x, y in zip(a, other))


def test_synthetic_masks_areas_and_styles():
    k, res = 4, 32
    fg_seen, bg_seen = set(), set()
    for s in synthetic_samples(200, res, k, seed=0):
        image, mask, meta = s["image"], s["mask"], s["meta"]
        assert image.shape == (res, res, 3) and image.dtype == np.uint8
        assert mask.shape == (res, res) and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 255}
        fg = mask == 255
        assert meta["area"] == pytest.approx(fg.mean())
        assert 0.10 <= meta["area"] <= 0.50
        fg_seen.add(meta["fg_style"])
        bg_seen.add(meta["bg_style"])
        # The mean colour inside the mask has the foreground style's hue and is saturated; outside it
        # has the background style's hue, offset by half a step, and is muted.
        fg_mean, bg_mean = image[fg].mean(0), image[~fg].mean(0)
        assert _hue_dist(_hue(fg_mean), meta["fg_style"] / k) < 0.5 / k
        assert _hue_dist(_hue(bg_mean), (meta["bg_style"] + 0.5) / k) < 0.5 / k
        sat = lambda rgb: colorsys.rgb_to_hsv(*(rgb / 255))[1]  # noqa: E731
        assert sat(fg_mean) > 0.6 > 0.4 > sat(bg_mean)
    assert fg_seen == bg_seen == set(range(k))


def test_render_sample_other_resolutions():
    for res in (16, 64):
        image, mask, meta = render_sample(np.random.default_rng(7), res, 3)
        assert image.shape == (res, res, 3) and mask.shape == (res, res)
        assert 0.10 <= meta["area"] <= 0.50 and 0 <= meta["fg_style"] < 3 and 0 <= meta["bg_style"] < 3


# ---------------------------------------------------------------------------------------------
# io, writer, eval reader

def test_io_urls(tmp_path):
    base = "file://" + str(tmp_path)
    assert join_url("s3://bkt/runs/", "a", "/b.pt") == "s3://bkt/runs/a/b.pt"
    assert join_url(str(tmp_path), "x") == f"{tmp_path}/x"
    write_bytes(join_url(base, "d", "one.tar"), b"1")
    write_bytes(join_url(str(tmp_path), "d", "two.tar"), b"22")
    write_bytes(join_url(base, "d", "note.txt"), b"")
    assert url_exists(join_url(base, "d", "one.tar")) and not url_exists(join_url(base, "d", "nope"))
    assert list_urls(join_url(base, "d"), ".tar") == [f"{base}/d/one.tar", f"{base}/d/two.tar"]
    assert list_urls(join_url(str(tmp_path), "d"), ".tar") == [f"{tmp_path}/d/one.tar", f"{tmp_path}/d/two.tar"]
    assert read_bytes(f"{base}/d/two.tar") == b"22"
    assert_moves_a_tree(base)


@contextmanager
def blocked_for_at_most(seconds: int):
    """Fail the test (rather than hang the suite) if the block has not ended after `seconds`."""
    def stop(*_):
        pytest.fail(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_io_refuses_what_it_cannot_open_in_one_line(tmp_path):
    """StorageErrors (one line, exit 2 in every job) naming the URL and what is wrong with it: an
    unknown scheme, a folder or a named pipe read as a file, a file where a folder must be."""
    with pytest.raises(StorageError, match=r"^foo://x/y: unknown URL scheme 'foo'; .*local path.*file://.*s3://.*gs"):
        read_bytes("foo://x/y")
    with pytest.raises(StorageError, match=re.escape(f"{tmp_path} is not a file: it is a folder")):
        read_bytes(str(tmp_path))
    (tmp_path / "f").write_text("mine")
    in_the_way = re.escape(f"{tmp_path / 'f'} is a file, not a folder")
    with pytest.raises(StorageError, match=in_the_way):
        read_bytes(str(tmp_path / "f" / "manifest.json"))
    with pytest.raises(StorageError, match=in_the_way):
        write_bytes(str(tmp_path / "f" / "run" / "config.yaml"), b"x")
    assert (tmp_path / "f").read_text() == "mine" and sorted(os.listdir(tmp_path)) == ["f"]
    if hasattr(os, "mkfifo"):  # opening a FIFO to read waits for a writer: refused at once instead
        os.mkfifo(tmp_path / "pipe")
        for read in (read_bytes, lambda url: open_url(url).__enter__()):
            with blocked_for_at_most(10), pytest.raises(StorageError, match="not a regular file: it is a named pipe"):
                read(str(tmp_path / "pipe"))


def assert_moves_a_tree(base: str) -> None:
    """move_tree: the whole folder arrives under a new parent, nothing is left behind, and a
    missing source is no error (an interrupted run moves what is there)."""
    write_bytes(join_url(base, "run", "stage1", "ckpt", "state.pt"), b"s")
    write_bytes(join_url(base, "run", "stage1", "generator.pt"), b"g")
    move_tree(join_url(base, "run", "stage1"), join_url(base, "run", "aside", "attempt1", "stage1"))
    assert list_tree(join_url(base, "run", "aside", "attempt1", "stage1")) == ["ckpt/state.pt", "generator.pt"]
    assert not url_exists(join_url(base, "run", "stage1", "generator.pt"))
    move_tree(join_url(base, "run", "nothing"), join_url(base, "run", "elsewhere"))
    assert not url_exists(join_url(base, "run", "elsewhere"))


def test_write_then_read_round_trip(tmp_path):
    url = str(tmp_path / "set")
    samples = list(synthetic_samples(70, 16, 3, seed=5))
    manifest = write_shards(samples, url, samples_per_shard=32, info={"why": "test"}, progress=False)
    assert manifest == read_manifest(url)
    assert manifest["num_samples"] == 70 and manifest["has_masks"] and manifest["info"] == {"why": "test"}
    assert manifest["resolution"] == manifest["min_resolution"] == manifest["max_resolution"] == [16, 16]
    assert [s["num_samples"] for s in manifest["shards"]] == [32, 32, 6]
    assert [s["name"] for s in manifest["shards"]] == [os.path.basename(u) for u in list_urls(url, ".tar")]
    for shard in manifest["shards"]:
        data = (tmp_path / "set" / shard["name"]).read_bytes()
        assert len(data) == shard["bytes"] and hashlib.sha256(data).hexdigest() == shard["sha256"]

    batches = list(eval_batches(url, 16))
    assert [len(x) for x, _ in batches] == [16, 16, 16, 16, 6]
    images, masks = torch.cat([x for x, _ in batches]), torch.cat([m for _, m in batches])
    want_images = torch.tensor(np.stack([s["image"] for s in samples])).permute(0, 3, 1, 2).float() / 127.5 - 1
    want_masks = torch.tensor(np.stack([s["mask"] for s in samples]))[:, None].float() / 255
    assert torch.allclose(images, want_images, atol=1e-6)  # PNG is lossless
    assert torch.equal(masks, want_masks)

    assert sum(len(x) for x, _ in eval_batches(url, 16, limit=20)) == 20
    x, m = next(eval_batches(url, 4, resolution=8))
    assert x.shape == (4, 3, 8, 8) and m.shape == (4, 1, 8, 8) and set(m.unique().tolist()) <= {0.0, 1.0}


def test_write_synthetic_is_reproducible(tmp_path):
    a = write_synthetic(str(tmp_path / "a"), 20, 16, 3, seed=1, samples_per_shard=8, progress=False)
    b = write_synthetic(str(tmp_path / "b"), 20, 16, 3, seed=1, samples_per_shard=8, progress=False)
    assert [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]]
    assert a["info"]["seed"] == 1 and a["info"]["num_styles"] == 3


def test_images_without_masks(tmp_path):
    url = str(tmp_path / "nomask")
    samples = [{"key": s["key"], "image": s["image"]} for s in synthetic_samples(10, 16, 2, seed=0)]
    assert not write_shards(samples, url, progress=False)["has_masks"]
    with pytest.raises(DatasetError, match="no ground-truth masks"):
        next(eval_batches(url, 4))
    assert next(iter(train_loader(url, 4, num_workers=0))).images.shape == (4, 3, 16, 16)


# ---------------------------------------------------------------------------------------------
# training reader

def _keys(url, rank, world, workers, batches, **kw):
    it = iter(train_loader(url, 8, rank=rank, world_size=world, num_workers=workers, seed=11, **kw))
    shapes, keys = set(), set()
    for images, batch_keys, *_ in itertools.islice(it, batches):
        shapes.add(tuple(images.shape))
        assert images.dtype == torch.float32 and images.min() >= -1 and images.max() <= 1
        keys.update(batch_keys)
    del it  # stops the loader's workers
    return shapes, keys


@pytest.mark.parametrize("workers,per_shard", [(0, 16), (2, 16), (2, 64)])  # whole shards, mixed, split by sample
def test_train_loader_splits_ranks(tmp_path, workers, per_shard):
    url = str(tmp_path / "train")
    write_synthetic(url, 96, 16, 3, seed=2, samples_per_shard=per_shard, progress=False)
    # 40 batches of 8 are ~6 passes over each rank's 48 samples: every key shows up
    (shapes0, keys0), (shapes1, keys1) = (_keys(url, r, 2, workers, 40) for r in range(2))
    assert shapes0 == shapes1 == {(8, 3, 16, 16)}
    assert not keys0 & keys1
    assert keys0 | keys1 == {"%08d" % i for i in range(96)}
    assert len(keys0) == len(keys1) == 48


def test_train_loader_seed_resize_and_flip(tiny_shards):
    url = str(tiny_shards / "train")  # 16 px
    first = lambda **kw: next(iter(train_loader(url, 4, num_workers=0, **kw))).images  # noqa: E731
    assert torch.equal(first(seed=1), first(seed=1))
    assert not torch.equal(first(seed=1), first(seed=2))
    assert first(resolution=8).shape == (4, 3, 8, 8)
    # no flips: every training image is one of the stored images, unchanged
    stored = torch.cat([x for x, _ in eval_batches(url, 64)])
    for image in first(hflip=False):
        assert (stored - image).abs().flatten(1).max(1).values.min() < 1e-6


# ---------------------------------------------------------------------------------------------
# errors

def test_dataset_errors(tmp_path):
    with pytest.raises(DatasetError, match="folder does not exist"):
        read_manifest(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="manifest.json not found"):
        read_manifest(str(tmp_path / "empty"))
    with pytest.raises(DatasetError, match="manifest.json not found"):
        train_loader(str(tmp_path / "empty"), 4)

    def manifest(name, **fields):
        folder = tmp_path / name
        folder.mkdir()
        m = {"format": "ds-comgan-shards/1", "num_samples": 3, "has_masks": True,
             "shards": [{"name": "shard-000000.tar", "num_samples": 3}]}
        (folder / "manifest.json").write_text(json.dumps({**m, **fields}))
        return str(folder)

    with pytest.raises(DatasetError, match="lists no shards"):
        read_manifest(manifest("noshards", shards=[]))
    with pytest.raises(DatasetError, match="zero samples"):
        read_manifest(manifest("nosamples", num_samples=0))
    with pytest.raises(DatasetError, match="listed in manifest.json but missing"):
        next(eval_batches(manifest("lost"), 2))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        read_manifest(str(tmp_path / "bad"))
    err = pytest.raises(DatasetError, read_manifest, str(tmp_path / "missing")).value
    assert isinstance(err, ValueError) and "\n" not in str(err) and str(tmp_path / "missing") in str(err)


# ---------------------------------------------------------------------------------------------
# s3:// through the local moto server (conftest.s3_bucket); the endpoint comes from the environment

def test_s3_round_trip(s3_bucket):
    url = join_url(s3_bucket, "sets", "train")
    with pytest.raises(DatasetError, match="manifest.json not found"):
        read_manifest(url)
    manifest = write_synthetic(url, 24, 16, 2, seed=9, samples_per_shard=10, progress=False)
    assert read_manifest(url) == manifest
    assert list_urls(url, ".tar") == [f"{url}/shard-00000{i}.tar" for i in range(3)]
    images = torch.cat([x for x, _ in eval_batches(url, 10)])
    want = torch.tensor(np.stack([s["image"] for s in synthetic_samples(24, 16, 2, seed=9)]))
    assert torch.allclose(images, want.permute(0, 3, 1, 2).float() / 127.5 - 1, atol=1e-6)
    assert next(iter(train_loader(url, 8, num_workers=0))).images.shape == (8, 3, 16, 16)
    assert_moves_a_tree(s3_bucket)
