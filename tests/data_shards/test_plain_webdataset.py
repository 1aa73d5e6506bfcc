"""Plain WebDataset tars as users hold them (KEY.jpg + KEY.json + KEY.txt, masks as KEY.mask.png,
no manifest.json) train and evaluate unchanged: a folder of tars, a brace pattern, a single tar,
locally, by file:// and on S3, indexed on the fly or once by data_shards.index.write_index; the
order stays exactly resumable; user mistakes are one-line DatasetErrors."""
from __future__ import annotations

import logging
import os
import re
import shutil
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_datasets import plain_value, write_plain_tars, write_set
from test_order_and_resume import assert_same, png, saved, take

from data_shards import index, order
from data_shards.index import DatasetError, read_manifest, shard_urls
from data_shards.io import join_url, put_file
from data_shards.order import LoaderCursor
from data_shards.reader import check_usable, eval_batches, train_loader
from data_shards.writer import write_synthetic

RES = 8


def grey(images: torch.Tensor) -> list[float]:
    """Each image's mean as a 0..255 grey."""
    return ((images.flatten(1).mean(1) + 1) * 127.5).tolist()


def one_line(fn, match: str) -> str:
    with pytest.raises(DatasetError, match=match) as caught:
        fn()
    message = str(caught.value)
    traceback.clear_frames(caught.value.__traceback__)  # see test_order_and_resume.raises_fast
    assert "\n" not in message
    return message


@pytest.fixture
def plain(tmp_path):
    """3 shards of 5 samples in photos-0000.tar .. photos-0002.tar, every sample with a mask."""
    folder = tmp_path / "plain"
    return str(folder), write_plain_tars(folder)


# ---------------------------------------------------------------------------------------------
# a folder of tars without manifest.json

def test_a_folder_of_plain_tars_is_indexed_in_memory(plain):
    url, _ = plain
    before = sorted(os.listdir(url))
    manifest = read_manifest(url)
    assert manifest["indexed"] and manifest["num_samples"] == 15 and manifest["has_masks"]
    assert [(s["name"], s["num_samples"], s["num_masks"]) for s in manifest["shards"]] == \
        [(f"photos-{i:04d}.tar", 5, 5) for i in range(3)]
    assert [s["bytes"] for s in manifest["shards"]] == [os.path.getsize(u) for u in shard_urls(url, manifest)]
    assert manifest["image_keys"] == {"jpg": 5, "png": 5, "jpeg": 5}
    assert manifest["mask_keys"] == {"mask.png": 10, "mask.jpg": 5}
    assert sorted(os.listdir(url)) == before  # reading writes nothing beside the user's tars


def test_train_loader_and_eval_read_plain_tars(plain):
    url, keys = plain
    batches = take(train_loader(url, 5, num_workers=0, seed=1, resolution=RES), 6)
    seen = [k for b in batches for k in b.keys]
    assert sorted(seen[:15]) == sorted(seen[15:]) == keys  # two passes, each sample once a pass
    assert all(b.images.shape == (5, 3, RES, RES) for b in batches)
    for b in batches:  # images of three sizes, all resized; the grey is the sample's own
        want = [plain_value(int(k)) for k in b.keys]
        assert np.allclose(grey(b.images), want, atol=3)
    out = list(eval_batches(url, 4, resolution=RES))
    assert [len(x) for x, _ in out] == [4, 4, 4, 3]
    images, masks = torch.cat([x for x, _ in out]), torch.cat([m for _, m in out])
    assert np.allclose(grey(images), [plain_value(int(k)) for k in keys], atol=3)  # stored order
    assert torch.equal(masks[:, 0, :RES // 2], torch.ones(15, RES // 2, RES))     # mask.png and mask.jpg
    assert torch.equal(masks[:, 0, RES // 2:], torch.zeros(15, RES // 2, RES))
    assert check_usable(url, resolution=RES, masks=True) is None


def test_ranks_split_plain_tars_with_loader_workers(plain):
    url, keys = plain
    parts = [[k for b in take(train_loader(url, 1, rank=r, world_size=2, num_workers=2, seed=0, resolution=RES), 14)
              for k in b.keys] for r in range(2)]
    assert not set(parts[0]) & set(parts[1]) and sorted(set(parts[0]) | set(parts[1])) == keys


def test_sets_with_some_masks_train_but_do_not_evaluate(tmp_path):
    url = str(tmp_path / "some")
    write_plain_tars(tmp_path / "some", without_masks=(1,))
    manifest = read_manifest(url)
    assert not manifest["has_masks"] and manifest["num_masks"] == 10
    assert next(iter(train_loader(url, 4, num_workers=0, resolution=RES))).images.shape == (4, 3, RES, RES)
    one_line(lambda: next(eval_batches(url, 4, resolution=RES)), "no ground-truth masks")


def test_an_indexed_set_needs_a_resolution(plain):
    url, _ = plain
    one_line(lambda: check_usable(url), "image sizes are unknown; pass a resolution")
    one_line(lambda: train_loader(url, 4, num_workers=0), "pass a resolution")


# ---------------------------------------------------------------------------------------------
# brace patterns and single tars

def test_brace_patterns_and_single_tars_name_their_shards(plain, tmp_path):
    url, keys = plain
    for scheme, names, shards in [("", "{0000..0001}", [0, 1]), ("file://", "{0001,0002}", [1, 2]), ("", "0002", [2])]:
        pattern = f"{scheme}{url}/photos-{names}.tar"
        manifest = read_manifest(pattern)
        assert shard_urls(pattern, manifest) == [f"{scheme}{url}/photos-{s:04d}.tar" for s in shards]
        assert manifest["num_samples"] == 5 * len(shards)
        want = [k for s in shards for k in keys[5 * s:5 * s + 5]]
        assert sorted(k for b in take(train_loader(pattern, 5, num_workers=0, resolution=RES), len(shards))
                      for k in b.keys) == want
        images = torch.cat([x for x, _ in eval_batches(pattern, 8, resolution=RES)])
        assert np.allclose(grey(images), [plain_value(int(k)) for k in want], atol=3)
    # a pattern over two folders: names are relative to the folder before the first brace
    shutil.copytree(url, tmp_path / "b")
    both = f"{tmp_path}/{{plain,b}}/photos-{{0000..0001}}.tar"
    manifest = read_manifest(both)
    assert [s["name"] for s in manifest["shards"]] == ["plain/photos-0000.tar", "plain/photos-0001.tar",
                                                       "b/photos-0000.tar", "b/photos-0001.tar"]
    assert shard_urls(both, manifest)[2] == f"{tmp_path}/b/photos-0000.tar"
    assert len(next(iter(eval_batches(both, 20, resolution=RES)))[0]) == 20


def test_missing_shards_of_a_pattern_are_left_out_with_a_warning(plain, caplog):
    url, _ = plain
    with caplog.at_level(logging.WARNING, logger="data_shards"):
        manifest = read_manifest(f"{url}/photos-{{0001..0004}}.tar")
    assert [s["name"] for s in manifest["shards"]] == ["photos-0001.tar", "photos-0002.tar"]
    assert "2 of the 4 shards it names do not exist" in caplog.text and "photos-0003.tar" in caplog.text


def test_a_manifest_beside_a_pattern_is_used_only_when_it_lists_those_shards(tiny_shards):
    url = str(tiny_shards / "train")  # ours: 256 samples in 4 shards
    written = read_manifest(url)
    assert read_manifest(f"{url}/shard-{{000000..000003}}.tar") == written
    part = read_manifest(f"{url}/shard-{{000000..000001}}.tar")  # two of its four shards: indexed
    assert part["indexed"] and [s["num_samples"] for s in part["shards"]] == [64, 64]
    assert part["image_keys"] == {"image.png": 128}  # our own field names are plain WebDataset too


# ---------------------------------------------------------------------------------------------
# indexed once, written beside the tars

def test_write_index_writes_the_manifest_beside_untouched_tars(plain):
    url, _ = plain
    tars = {p.name: p.read_bytes() for p in Path(url).iterdir()}
    manifest, written = index.write_index(url, progress=False)
    assert written == join_url(url, "manifest.json") and manifest["indexed"]
    assert sorted(os.listdir(url)) == sorted([*tars, "manifest.json"])
    assert all((Path(url) / n).read_bytes() == data for n, data in tars.items())  # no byte of them changed
    index._INDEXED.clear()  # a new process: the written manifest is read, nothing is indexed
    assert read_manifest(url) == manifest
    assert read_manifest(f"{url}/photos-{{0000..0002}}.tar") == manifest
    assert not index._INDEXED
    with pytest.raises(index.DestinationExists, match="manifest.json already exists; use --overwrite"):
        index.write_index(url, progress=False)
    assert index.write_index(url, overwrite=True, progress=False)[0]["num_samples"] == 15


# ---------------------------------------------------------------------------------------------
# exact resume

@pytest.mark.parametrize("workers", [0, 2])
def test_resume_on_plain_tars_continues_the_uninterrupted_order(tmp_path, monkeypatch, workers):
    """As test_order_and_resume.test_resume_continues_the_uninterrupted_order, on plain tars of
    uneven sizes, one cut off mid-sample: each loader indexes them anew, as a new process would."""
    monkeypatch.setattr(order, "SHUFFLE_WINDOW", 3)
    folder = tmp_path / "plain"
    write_plain_tars(folder, per_shard=(7, 7, 9, 3, 5), name="part-%03d.tar")
    cut = folder / "part-002.tar"
    data = cut.read_bytes()
    cut.write_bytes(data[:data.index(b"000020.jpeg") + 900])  # inside the 7th sample of 9
    url = f"{folder}/part-{{000..004}}.tar"
    assert [s["num_samples"] for s in read_manifest(url)["shards"]] == [7, 7, 6, 3, 5]
    k, more, batch = 7, 9, 3
    for rank in range(2):
        def make(rank=rank, **kw):
            index._INDEXED.clear()
            return train_loader(url, batch, rank=rank, world_size=2, num_workers=workers, seed=5, resolution=RES, **kw)
        whole = take(make(), k + more)
        cursor = LoaderCursor(workers)
        for b in whole[:k]:
            cursor.update(b)
        assert min(cursor.positions) > 7  # past a pass of every role
        assert_same(take(make(resume=saved(cursor, tmp_path)), more), whole[k:])


# ---------------------------------------------------------------------------------------------
# user mistakes: one line each

def test_user_mistakes_are_one_line_errors(plain, tmp_path):
    url, _ = plain
    one_line(lambda: read_manifest(f"{url}/photo-{{0000..0009}}.tar"),
             r"photo-\{0000..0009\}.tar matches no existing shard \(it names 10, the first .*photo-0000.tar\)")
    one_line(lambda: train_loader(f"{tmp_path}/nowhere/x.tar", 2), "matches no existing shard")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no tars here")
    one_line(lambda: read_manifest(str(tmp_path / "empty")), "manifest.json not found and no .tar files in it")
    one_line(lambda: read_manifest(str(tmp_path / "missing")), "the folder does not exist")
    (tmp_path / "photos" / "a").mkdir(parents=True)
    (tmp_path / "photos" / "a" / "bird.JPG").write_bytes(b"not read")
    one_line(lambda: read_manifest(str(tmp_path / "photos")),
             f"no shard dataset at {tmp_path}/photos: it holds images, not shards; make shards of them with "
             f"python jobs/make_shards.py folder {tmp_path}/photos {tmp_path}/photos-shards")
    shutil.copytree(url, tmp_path / "foreign")
    (tmp_path / "foreign" / "manifest.json").write_text('{"made_by": "another tool"}')
    one_line(lambda: read_manifest(str(tmp_path / "foreign")), "not a ds-comgan-shards/1 manifest .*brace pattern")
    assert read_manifest(f"{tmp_path}/foreign/photos-{{0000..0002}}.tar")["num_samples"] == 15  # named: indexed
    write_set(tmp_path / "noimage", [[{"__key__": f"{i:04d}", "picture.jpg": png(i), "json": b"{}"} for i in range(4)]])
    os.remove(tmp_path / "noimage" / "manifest.json")
    message = one_line(lambda: next(eval_batches(str(tmp_path / "noimage"), 2, resolution=RES)),
                       "none of its 4 samples has an image; fields seen: json, picture.jpg")
    assert {"image.png", "jpg", "jpeg", "png", "webp"} <= set(re.findall(r"[\w.]+", message.split("looks for")[1]))


def test_the_unusable_sample_message_names_every_field_the_reader_takes(tmp_path):
    """A set with manifest.json whose samples hold no image: the readers' streak error."""
    url = write_set(tmp_path / "odd", [[{"__key__": f"{i:04d}", "picture.jpg": png(i), "mask.tif": png(1)}
                                        for i in range(6)]])
    message = one_line(lambda: check_usable(url, masks=True), "6 samples tried in a row")
    looked_for = set(re.findall(r"[\w.]+", message.split("looks for")[1]))
    assert {"image.webp", "jpg", "jpeg", "png", "webp", "mask.png", "mask.jpg"} <= looked_for


def test_our_shards_without_their_manifest_are_refused_not_indexed(tmp_path):
    """An unfinished write of ours (writer.py removes manifest.json first) is not read as a plain
    set, and a driver may rewrite it; a user's plain tars it must never write over."""
    url = str(tmp_path / "ours")
    write_synthetic(url, 8, RES, 2, seed=0, samples_per_shard=4, progress=False)
    os.remove(os.path.join(url, "manifest.json"))
    one_line(lambda: read_manifest(url), "no manifest.json: a write that was cut off or is still running")
    assert not index.holds_shards(url) and not index.holds_shards(str(tmp_path / "nothing"))
    write_plain_tars(tmp_path / "plain", per_shard=(2,), name="shard-%06d.tar")  # our names, plain fields
    assert index.holds_shards(str(tmp_path / "plain")) and index.holds_shards(f"{tmp_path}/x-{{0..1}}.tar")
    assert read_manifest(str(tmp_path / "plain"))["num_samples"] == 2


def test_the_driver_reads_plain_tars_and_never_writes_over_them(tmp_path):
    """ensure_data with data.synthetic left on (the default) writes synthetic shards only where
    no data is: plain tars and brace patterns are read as they are."""
    from cluster.config import load_config
    from cluster.pipeline import ensure_data

    write_plain_tars(tmp_path / "train", per_shard=(6, 6), without_masks=(0,), name="shard-%06d.tar")
    write_plain_tars(tmp_path / "eval", per_shard=(4,))
    before = {p: p.read_bytes() for p in tmp_path.rglob("*.tar")}
    cfg = load_config("tiny", [f"data.train={tmp_path}/train", f"data.eval={tmp_path}/eval/photos-{{0000..0000}}.tar"])
    assert cfg.data.synthetic
    ensure_data(cfg)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*.tar")} == before
    assert not list(tmp_path.rglob("manifest.json"))


def test_the_driver_writes_synthetic_data_only_to_its_own_folders(tmp_path, monkeypatch):
    """data.synthetic (on by default) fills the built-in locations, and paths under them, when they
    are missing; a user's path without data is a one-line error that writes nothing there."""
    from cluster.config import ConfigError, load_config
    from cluster.pipeline import ensure_data, is_synthetic_home

    monkeypatch.chdir(tmp_path)
    for path, home in [("data_shards/synthetic/train", True), ("data_shards/tiny/eval", True),
                       (f"{tmp_path}/data_shards/tiny/x/train", True), ("./data_shards/synthetic", True),
                       ("data_shards/synthetic_64/train", False), ("data_shards/tiny/../photos", False),
                       ("data/train", False), ("s3://bucket/data_shards/synthetic/train", False)]:
        assert is_synthetic_home(path) == home, path
    ensure_data(load_config("tiny", ["data.eval=data_shards/tiny/sub/eval"]))
    assert read_manifest("data_shards/tiny/train")["num_samples"] == 256
    assert read_manifest("data_shards/tiny/sub/eval")["has_masks"]
    for key in ("train", "eval"):
        cfg = load_config("tiny", [f"data.{key}={tmp_path}/cub/trian"])
        with pytest.raises(ConfigError, match=rf"data.{key}={tmp_path}/cub/trian: nothing is there .* write it "
                                              rf"first: python jobs/make_shards.py synthetic {tmp_path}/cub/trian "
                                              rf"--count {256 if key == 'train' else 32} --resolution 16 --styles 3"):
            ensure_data(cfg)
        assert not (tmp_path / "cub").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="nothing is there"):
        ensure_data(load_config("tiny", [f"data.train={tmp_path}/empty"]))
    assert not list((tmp_path / "empty").iterdir())


# ---------------------------------------------------------------------------------------------
# s3:// through the local moto server (conftest.s3_bucket)

def test_s3_brace_pattern_and_folder(plain, s3_bucket):
    url, keys = plain
    for name in sorted(os.listdir(url)):
        put_file(os.path.join(url, name), f"{s3_bucket}/photos/{name}")
    pattern = f"{s3_bucket}/photos/photos-{{0000..0002}}.tar"
    manifest = read_manifest(pattern)
    assert manifest["num_samples"] == 15
    assert shard_urls(pattern, manifest) == [f"{s3_bucket}/photos/photos-{i:04d}.tar" for i in range(3)]
    images = torch.cat([x for x, _ in eval_batches(pattern, 8, resolution=RES)])
    assert np.allclose(grey(images), [plain_value(int(k)) for k in keys], atol=3)
    batch = next(iter(train_loader(f"{s3_bucket}/photos", 5, num_workers=0, resolution=RES)))
    assert batch.images.shape == (5, 3, RES, RES) and set(batch.keys) <= set(keys)
    one_line(lambda: read_manifest(f"{s3_bucket}/photos/photos-{{0007..0009}}.tar"), "matches no existing shard")
    manifest, written = index.write_index(pattern, progress=False)
    assert written == f"{s3_bucket}/photos/manifest.json"
    index._INDEXED.clear()
    assert read_manifest(f"{s3_bucket}/photos") == manifest == read_manifest(pattern)


def test_a_part_of_only_damaged_samples_is_empty_not_an_error(tmp_path):
    """Evaluation split into parts (Ray tasks) must agree with the whole set: a part whose shard
    holds only undecodable images yields nothing, while the whole set still reads its good ones."""
    import io

    import webdataset as wds
    from PIL import Image

    def png(array):
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, format="PNG")
        return buf.getvalue()

    mask = np.zeros((8, 8), np.uint8)
    mask[:4] = 255
    for s in range(3):
        with wds.TarWriter(str(tmp_path / f"part-{s}.tar")) as tw:
            for i in range(2):
                image = b"not an image" if s == 0 else png(np.full((8, 8, 3), 40 * s + i, np.uint8))
                tw.write({"__key__": f"{s}{i}", "png": image, "mask.png": png(mask)})
    url = str(tmp_path)
    assert list(eval_batches(url, 4, resolution=8, part=0, parts=3)) == []
    keys = [k for p in (1, 2) for _, _, names in eval_batches(url, 4, resolution=8, part=p, parts=3, keys=True)
            for k in names]
    assert keys == ["10", "11", "20", "21"]
    assert [k for _, _, names in eval_batches(url, 4, resolution=8, keys=True) for k in names] == keys
    with pytest.raises(DatasetError):  # the whole set read alone, with nothing usable, still fails
        list(eval_batches(str(tmp_path / "part-0.tar"), 4, resolution=8))
