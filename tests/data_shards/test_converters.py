"""data_shards.converters and the writer's extensions: fake CUB, Flowers and folder layouts built
with PIL in tmp_path, written as shards and read back byte by byte."""
from __future__ import annotations

import hashlib
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from data_shards.converters import (ConversionError, cub_source, crop_box, flowers_source, folder_source,
                                    images_source, key_for, resized_size)
from data_shards.io import join_url, list_urls, put_file, read_bytes, url_exists
from data_shards.progress import Progress
from data_shards.writer import DestinationExists, parse_size, write_shards, write_synthetic
from fake_datasets import decode, make_cub, make_flowers, make_folder, read_set


def write(source, url, **kw):
    kw.setdefault("progress", False)
    return write_shards(source, url, skipped=source.skipped, **kw)


def check_checksums(url: str, manifest: dict) -> None:
    for shard in manifest["shards"]:
        data = open(os.path.join(url, shard["name"]), "rb").read()
        assert len(data) == shard["bytes"] and hashlib.sha256(data).hexdigest() == shard["sha256"]


# ---------------------------------------------------------------------------------------------
# pure helpers

def test_keys_and_sizes():
    assert key_for("001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg") == \
        "001_Black_footed_Albatross__Black_Footed_Albatross_0046_18"
    assert key_for("image_00001.jpg") == "image_00001"
    assert resized_size(300, 200, 100) == (150, 100) and resized_size(200, 300, 100) == (100, 150)
    assert [parse_size(s) for s in ("256MB", "1.5GB", "64MiB", "500k", "1048576")] == \
        [256_000_000, 1_500_000_000, 64 << 20, 500_000, 1048576]
    for bad in ("", "12XB", "MB", "-3", "0"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_crop_box_is_the_paper_code():
    """The FineGAN/ComGAN loader, written out: r = int(max(w, h) * 0.75), centre int((2x + w) / 2)."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        W, H = (int(v) for v in rng.integers(50, 500, size=2))
        x, y = rng.uniform(-20, W), rng.uniform(-20, H)
        w, h = rng.uniform(1, W), rng.uniform(1, H)
        r = int(np.maximum(w, h) * 0.75)
        cx, cy = int((2 * x + w) / 2), int((2 * y + h) / 2)
        want = (max(0, cx - r), max(0, cy - r), min(W, cx + r), min(H, cy + r))
        assert crop_box((x, y, w, h), W, H) == want
    assert crop_box((10, 10, 20, 20), 100, 100, scale=2.0) == (0, 0, 40, 40)


# ---------------------------------------------------------------------------------------------
# CUB

def test_cub_split_counts_and_meta(tmp_path):
    records = make_cub(tmp_path / "CUB")
    counts = {split: len(cub_source(str(tmp_path / "CUB"), split=split)) for split in ("all", "train", "test")}
    assert counts == {"all": 9, "train": 5, "test": 4}
    url = str(tmp_path / "train")
    manifest = write(cub_source(str(tmp_path / "CUB"), split="train", shuffle_seed=None), url)
    assert manifest["num_samples"] == manifest["num_masks"] == 5 and manifest["has_masks"]
    _, samples = read_set(url)
    want = {key_for(r["rel"]): r for r in records if r["is_train"]}
    assert set(samples) == set(want)
    for key, files in samples.items():
        meta, r = json.loads(files["json"]), want[key]
        assert meta["source"] == f"images/{r['rel']}" and meta["size"] == list(r["size"])
        assert meta["class_id"] == r["class"] and meta["bbox"] == list(r["bbox"]) and meta["is_train"]
        assert "crop" not in meta
        # no pixel change: the JPEG is stored bit for bit, the soft mask binarised at > 127
        assert files["image.jpg"] == (tmp_path / "CUB" / "images" / r["rel"]).read_bytes()
        mask = decode(files["mask.png"])
        assert mask.ndim == 2 and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
        assert np.array_equal(mask == 255, r["mask"])


def test_cub_crop_bbox_crops_image_and_mask_identically(tmp_path):
    records = make_cub(tmp_path / "CUB")
    url = str(tmp_path / "crop")
    manifest = write(cub_source(str(tmp_path / "CUB"), crop_bbox=True), url)
    _, samples = read_set(url)
    assert len(samples) == 9
    clipped = 0
    for r in records:
        files = samples[key_for(r["rel"])]
        meta = json.loads(files["json"])
        H, W = r["size"]
        x1, y1, x2, y2 = crop_box(r["bbox"], W, H)
        clipped += x1 == 0 or y1 == 0 or x2 == W or y2 == H
        assert meta["crop"] == [x1, y1, x2, y2] and meta["size"] == [H, W]
        image, mask = decode(files["image.jpg"], "RGB"), decode(files["mask.png"])
        assert image.shape == (y2 - y1, x2 - x1, 3) and mask.shape == (y2 - y1, x2 - x1)
        # the mask is the source mask cut by the same box, and the whole object stays inside
        assert np.array_equal(mask == 255, r["mask"][y1:y2, x1:x2])
        assert (mask == 255).sum() == r["mask"].sum()
        # re-encoded as JPEG (quality 95) from the same crop of the source pixels
        source = decode((tmp_path / "CUB" / "images" / r["rel"]).read_bytes(), "RGB")[y1:y2, x1:x2]
        assert np.abs(image.astype(int) - source).mean() < 6   # noise-textured background: JPEG error ~3
        red = (image[..., 0] > 150) & (image[..., 1] < 100)
        # aligned with the bird (the mask also holds the soft ring just outside the painted ellipse)
        assert red[mask == 255].mean() > 0.7 and red[mask == 0].mean() < 0.02
    assert clipped >= 1
    sizes = np.array([decode(f["mask.png"]).shape for f in samples.values()])
    assert manifest["min_resolution"] == sizes.min(0).tolist() and manifest["max_resolution"] == sizes.max(0).tolist()


def test_cub_resize_and_missing_segmentations(tmp_path):
    make_cub(tmp_path / "CUB", segmentations=False)
    url = str(tmp_path / "small")
    manifest = write(cub_source(str(tmp_path / "CUB"), split="test", crop_bbox=True, resize=16), url)
    assert manifest["num_samples"] == 4 and manifest["num_masks"] == 0 and not manifest["has_masks"]
    assert "samples_without_masks" not in manifest       # only listed when some samples have masks
    assert manifest["min_resolution"][0] == 16 or manifest["min_resolution"][1] == 16
    for files in read_set(url)[1].values():
        assert set(files) == {"image.jpg", "json"} and min(decode(files["image.jpg"]).shape[:2]) == 16

    make_cub(tmp_path / "CUB2")
    url = str(tmp_path / "small2")
    write(cub_source(str(tmp_path / "CUB2"), resize=20), url)
    for files in read_set(url)[1].values():
        image, mask = decode(files["image.jpg"]), decode(files["mask.png"])
        assert min(image.shape[:2]) == 20 and mask.shape == image.shape[:2] and set(np.unique(mask)) <= {0, 255}


def test_cub_layout_errors(tmp_path):
    with pytest.raises(ConversionError, match="does not exist"):
        cub_source(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConversionError, match="not a CUB-200-2011 folder: images.txt not found"):
        cub_source(str(tmp_path / "empty"))
    make_cub(tmp_path / "CUB")
    (tmp_path / "CUB" / "train_test_split.txt").unlink()
    assert len(cub_source(str(tmp_path / "CUB"))) == 9           # the split file is needed only to split
    with pytest.raises(ConversionError, match="train_test_split.txt not found"):
        cub_source(str(tmp_path / "CUB"), split="train")
    (tmp_path / "CUB" / "bounding_boxes.txt").write_text("1 1.0 2.0\n")
    with pytest.raises(ConversionError, match="line 1: expected an id and 4 values"):
        cub_source(str(tmp_path / "CUB"), crop_bbox=True)


# ---------------------------------------------------------------------------------------------
# Flowers

def test_flowers_masks_from_segmim(tmp_path):
    truth = make_flowers(tmp_path / "flowers")
    url = str(tmp_path / "out")
    manifest = write(flowers_source(str(tmp_path / "flowers")), url)
    assert manifest["num_samples"] == 4 and manifest["num_masks"] == 3 and not manifest["has_masks"]
    assert manifest["samples_without_masks"] == ["image_00003"]
    assert sorted(s["num_masks"] for s in manifest["shards"]) == [3]
    _, samples = read_set(url)
    assert "mask.png" not in samples["image_00003"]
    for key, fg in truth.items():
        mask = decode(samples[key]["mask.png"])
        assert set(np.unique(mask)) <= {0, 255}
        iou = ((mask == 255) & fg).sum() / ((mask == 255) | fg).sum()
        assert iou > 0.93, (key, iou)    # JPEG noise on the blue, a blue-ish flower: still the disc
        assert samples[key]["image.jpg"] == (tmp_path / "flowers" / "jpg" / f"{key}.jpg").read_bytes()
        assert json.loads(samples[key]["json"])["mask_source"] == f"segmim/{key.replace('image', 'segmim')}.jpg"


def test_flowers_layout_error(tmp_path):
    (tmp_path / "f").mkdir()
    with pytest.raises(ConversionError, match="not an Oxford 102 Flowers folder: jpg/ not found"):
        flowers_source(str(tmp_path / "f"))


# ---------------------------------------------------------------------------------------------
# generic folders

def test_folder_modes_masks_and_bad_files(tmp_path, capsys):
    want = make_folder(tmp_path / "src", tmp_path / "masks")
    source = folder_source(str(tmp_path / "src"), str(tmp_path / "masks"))
    assert len(source) == 7                          # six images and the corrupt one; .txt and hidden left out
    url = str(tmp_path / "out")
    manifest = write(source, url)
    assert "warning: skipped broken.jpg: unreadable image" in capsys.readouterr().err
    assert manifest["skipped"] == {"unreadable image": 1}
    assert manifest["num_samples"] == 6 and manifest["num_masks"] == 4
    assert sorted(manifest["samples_without_masks"]) == ["pal", "rgba"]
    check_checksums(url, manifest)
    _, samples = read_set(url)
    assert set(samples) == want["keys"]
    assert {k for k, f in samples.items() if "mask.png" in f} == want["with_masks"]

    src = tmp_path / "src"
    # bytes pass through when the reader can decode them as they are
    assert samples["a__photo_one"]["image.jpg"] == (src / "a" / "photo.one.jpg").read_bytes()
    assert samples["grey"]["image.jpg"] == (src / "grey.jpg").read_bytes()
    assert samples["rgba"]["image.png"] == (src / "rgba.png").read_bytes()
    assert samples["pal"]["image.png"] == (src / "pal.png").read_bytes()
    # 16-bit grey is re-encoded as 8-bit RGB PNG, scaled (not clipped to white)
    deep = decode(samples["deep16"]["image.png"])
    assert deep.dtype == np.uint8 and deep.shape == (30, 40, 3)
    assert np.abs(deep[..., 0].astype(int) - want["deep"] / 257).max() <= 1
    for key in want["with_masks"]:       # 0/255, 0/1 and a noisy grey JPEG mask all give the object
        mask = decode(samples[key]["mask.png"])
        assert mask.dtype == np.uint8 and mask.ndim == 2 and set(np.unique(mask)) <= {0, 255}
        agree = ((mask == 255) == want["fg"]).mean()
        assert agree == 1.0 if key != "grey" else agree > 0.98, key
    assert json.loads(samples["a__photo_one"]["json"]) == {"source": "a/photo.one.jpg", "size": [30, 40],
                                                           "mask_source": "a/photo.one.png"}


def test_folder_resize_reencodes(tmp_path):
    make_folder(tmp_path / "src", tmp_path / "masks")
    url = str(tmp_path / "out")
    write(folder_source(str(tmp_path / "src"), str(tmp_path / "masks")), url, progress=False)
    url2 = str(tmp_path / "out2")
    write(folder_source(str(tmp_path / "src"), str(tmp_path / "masks"), resize=15), url2)
    _, samples = read_set(url2)
    assert set(samples["a__photo_one"]) == {"image.jpg", "mask.png", "json"}   # JPEG stays JPEG
    assert set(samples["rgba"]) == {"image.png", "json"}                       # the rest becomes PNG
    for files in samples.values():
        image = decode(files.get("image.jpg") or files["image.png"])
        assert image.shape == (15, 20, 3)
        if "mask.png" in files:
            assert decode(files["mask.png"]).shape == (15, 20)


def test_masks_inside_the_source_are_not_images(tmp_path):
    make_folder(tmp_path / "src", tmp_path / "src" / "masks")
    source = folder_source(str(tmp_path / "src"), str(tmp_path / "src" / "masks"))
    assert not any(item.rel.startswith("masks/") for item in source.items) and len(source) == 7


def test_folder_errors(tmp_path):
    with pytest.raises(ConversionError, match="source folder .* does not exist"):
        folder_source(str(tmp_path / "nope"))
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "readme.txt").write_text("x")
    with pytest.raises(ConversionError, match="no images in"):
        images_source(str(tmp_path / "empty"))
    make_folder(tmp_path / "src", tmp_path / "masks")
    with pytest.raises(ConversionError, match="masks folder .* does not exist"):
        folder_source(str(tmp_path / "src"), str(tmp_path / "no_masks"))
    (tmp_path / "other").mkdir()
    Image.new("L", (4, 4)).save(tmp_path / "other" / "unrelated.png")
    with pytest.raises(ConversionError, match="none of the 1 files in .* matches an image"):
        folder_source(str(tmp_path / "src"), str(tmp_path / "other"))
    Image.new("RGB", (4, 4)).save(tmp_path / "src" / "a" / "photo_one.png")  # key a__photo_one again
    with pytest.raises(ConversionError, match="both give sample key 'a__photo_one'"):
        images_source(str(tmp_path / "src"))


def test_mask_of_another_size_drops_the_sample(tmp_path):
    make_folder(tmp_path / "src", tmp_path / "masks")
    Image.new("L", (7, 7), 255).save(tmp_path / "masks" / "rgba.png")
    (tmp_path / "masks" / "pal.png").write_bytes(b"garbage")
    source = folder_source(str(tmp_path / "src"), str(tmp_path / "masks"))
    manifest = write(source, str(tmp_path / "out"))
    assert manifest["skipped"] == {"unreadable image": 1, "mask size differs from image": 1, "unreadable mask": 1}
    assert manifest["num_samples"] == 4 and manifest["has_masks"]


def test_shuffle_and_limit(tmp_path):
    make_cub(tmp_path / "CUB")
    ordered = [i.key for i in cub_source(str(tmp_path / "CUB"), shuffle_seed=None).items]
    shuffled = [i.key for i in cub_source(str(tmp_path / "CUB")).items]
    assert sorted(ordered) == sorted(shuffled) and ordered != shuffled
    assert shuffled == [i.key for i in cub_source(str(tmp_path / "CUB")).items]          # seeded
    assert [i.key for i in cub_source(str(tmp_path / "CUB"), limit=4).items] == shuffled[:4]


# ---------------------------------------------------------------------------------------------
# writer: pre-encoded images, shard limits, manifest, overwrite

def test_shards_roll_by_samples_and_by_bytes(tmp_path):
    make_cub(tmp_path / "CUB")
    by_count = write(cub_source(str(tmp_path / "CUB")), str(tmp_path / "a"), samples_per_shard=4)
    assert [s["num_samples"] for s in by_count["shards"]] == [4, 4, 1]
    check_checksums(str(tmp_path / "a"), by_count)

    limit = 20 * 1024   # about three fake CUB samples (a 10 KB tar record plus ~2.5 KB each)
    by_bytes = write(cub_source(str(tmp_path / "CUB")), str(tmp_path / "b"), shard_bytes=limit)
    assert len(by_bytes["shards"]) > 1 and sum(s["num_samples"] for s in by_bytes["shards"]) == 9
    assert all(s["bytes"] <= limit for s in by_bytes["shards"])
    listed = [os.path.basename(u) for u in list_urls(str(tmp_path / "b"), ".tar")]
    assert [s["name"] for s in by_bytes["shards"]] == listed
    check_checksums(str(tmp_path / "b"), by_bytes)
    both = write(cub_source(str(tmp_path / "CUB")), str(tmp_path / "c"), samples_per_shard=2, shard_bytes=10**9)
    assert [s["num_samples"] for s in both["shards"]] == [2, 2, 2, 2, 1]
    tiny = write(cub_source(str(tmp_path / "CUB")), str(tmp_path / "d"), shard_bytes=1)  # one sample each
    assert [s["num_samples"] for s in tiny["shards"]] == [1] * 9


def test_manifest_fields(tmp_path):
    make_flowers(tmp_path / "flowers")
    url = str(tmp_path / "out")
    m = write(flowers_source(str(tmp_path / "flowers")), url, converter={"name": "flowers", "options": {"x": 1}},
              info={"note": "kept"})
    assert m == json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["format"] == "ds-comgan-shards/1" and m["num_samples"] == 4 and m["info"] == {"note": "kept"}
    assert m["converter"] == {"name": "flowers", "options": {"x": 1}} and m["created"].startswith("20")
    assert m["min_resolution"] == [48, 60] and m["max_resolution"] == [48, 72]
    assert m["mean_resolution"] == [48.0, 66.0] and m["short_side_histogram"] == {"0-63": 4}
    for shard in m["shards"]:
        assert set(shard) == {"name", "num_samples", "num_masks", "bytes", "sha256"}
    check_checksums(url, m)


def test_write_shards_takes_encoded_images(tmp_path):
    arr = np.zeros((6, 9, 3), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="WEBP", lossless=True)
    samples = [{"key": "w", "image_bytes": buf.getvalue(), "image_ext": "webp", "mask": np.ones((6, 9), bool)},
               {"key": "a", "image": arr}]
    m = write_shards(samples, str(tmp_path / "o"), progress=False)
    assert m["min_resolution"] == m["max_resolution"] == [6, 9] and m["num_masks"] == 1
    assert m["samples_without_masks"] == ["a"]
    _, files = read_set(str(tmp_path / "o"))
    assert files["w"]["image.webp"] == buf.getvalue() and set(np.unique(decode(files["w"]["mask.png"]))) == {255}
    for bad, match in [({"key": "x", "image_bytes": b"nope", "image_ext": "png"}, "not an image"),
                       ({"key": "x", "image_bytes": buf.getvalue(), "image_ext": "gif"}, "image_ext must be"),
                       ({"key": "x", "image": arr, "mask": np.zeros((5, 9))}, "differs from the image"),
                       ({"key": "x.y", "image": arr}, "without '.'")]:
        with pytest.raises(ValueError, match=match):
            write_shards([bad], str(tmp_path / "bad"), progress=False)


def test_refuses_existing_set_and_cleans_stale_shards(tmp_path):
    url = str(tmp_path / "set")
    first = write_synthetic(url, 10, 8, 2, seed=0, samples_per_shard=2, progress=False)
    assert len(first["shards"]) == 5
    with pytest.raises(DestinationExists, match="already holds a shard set"):
        write_synthetic(url, 4, 8, 2, seed=1, samples_per_shard=2, progress=False, overwrite=False)
    assert json.loads((tmp_path / "set" / "manifest.json").read_text()) == first   # untouched
    (tmp_path / "set" / "notes.txt").write_text("mine")
    second = write_synthetic(url, 10, 8, 2, seed=1, samples_per_shard=4, progress=False, overwrite=True)
    assert sorted(os.listdir(url)) == ["manifest.json", "notes.txt", "shard-000000.tar", "shard-000001.tar",
                                       "shard-000002.tar"]
    check_checksums(url, second)


def test_refuses_any_non_empty_destination_and_deletes_only_shards_it_wrote(tmp_path):
    """Another tool's shard-NNNNNN.tar without a manifest of ours: refused without overwrite; with
    it, the names the new set writes are replaced and the rest kept (the writer did not make them)."""
    url = str(tmp_path / "theirs")
    write_synthetic(url, 10, 8, 2, seed=0, samples_per_shard=2, progress=False)
    (tmp_path / "theirs" / "manifest.json").write_text('{"made_by": "another tool"}')
    theirs = {n: (tmp_path / "theirs" / n).read_bytes() for n in os.listdir(url)}
    with pytest.raises(DestinationExists, match="already holds a shard set"):
        write_synthetic(url, 4, 8, 2, seed=1, samples_per_shard=2, progress=False, overwrite=False)
    os.remove(tmp_path / "theirs" / "manifest.json")
    with pytest.raises(DestinationExists, match="is not empty: .* --overwrite"):
        write_synthetic(url, 4, 8, 2, seed=1, samples_per_shard=2, progress=False, overwrite=False)
    assert sorted(os.listdir(url)) == sorted(n for n in theirs if n != "manifest.json")
    write_synthetic(url, 4, 8, 2, seed=1, samples_per_shard=2, progress=False, overwrite=True)
    assert sorted(os.listdir(url)) == sorted(theirs)
    assert all((tmp_path / "theirs" / n).read_bytes() == theirs[n] for n in ("shard-000002.tar", "shard-000004.tar"))


# ---------------------------------------------------------------------------------------------
# progress

class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_progress_lines():
    log = io.StringIO()
    p = Progress(label="cub", stream=log)
    p.total = 50
    for _ in range(50):
        p.advance()
    p.close()
    lines = log.getvalue().splitlines()
    assert len(lines) == 10 and lines[-1].startswith("cub: 50/50 samples (100%)") and "samples/s" in lines[0]
    assert "ETA" in lines[0]

    tty = FakeTTY()
    p = Progress(7, stream=tty)
    p.REDRAW_S = 0
    for _ in range(7):
        p.advance()
    p.note("warning: something")
    p.close()
    text = tty.getvalue()
    assert text.count("\r") >= 7 and "\r\033[Kwarning: something\n" in text   # the line is cleared first
    assert text.endswith("7/7 samples (100%)  " + text.rsplit("(100%)  ", 1)[1]) and text.endswith("\033[K\n")


# ---------------------------------------------------------------------------------------------
# round trips through the reader, and S3

def test_reader_round_trip_of_converted_sets(tmp_path):
    from data_shards.reader import eval_batches, train_loader

    records = make_cub(tmp_path / "CUB")
    url = str(tmp_path / "cub")
    write(cub_source(str(tmp_path / "CUB"), crop_bbox=True), url)   # JPEG images, PNG masks, mixed sizes
    batches = list(eval_batches(url, 4, resolution=16))
    assert sum(len(x) for x, _ in batches) == len(records)
    for x, m in batches:
        assert x.shape[1:] == (3, 16, 16) and m.shape[1:] == (1, 16, 16)
        red = (x[:, 0] > 0.2) & (x[:, 1] < -0.2)                     # the bird, in [-1, 1]
        assert (red == (m[:, 0] > 0.5)).float().mean() > 0.85          # masks still on the bird
    batch = next(iter(train_loader(url, 4, num_workers=0, resolution=16)))
    assert tuple(batch[0].shape) == (4, 3, 16, 16)

    make_folder(tmp_path / "src", tmp_path / "masks")
    write(images_source(str(tmp_path / "src")), str(tmp_path / "folder"))
    batch = next(iter(train_loader(str(tmp_path / "folder"), 3, num_workers=0, resolution=8)))
    assert tuple(batch[0].shape) == (3, 3, 8, 8)


def test_flowers_to_s3(s3_bucket, tmp_path):
    make_flowers(tmp_path / "flowers")
    dest = f"{s3_bucket}/flowers"
    manifest = write(flowers_source(str(tmp_path / "flowers")), dest, samples_per_shard=2)
    assert url_exists(join_url(dest, "manifest.json"))
    assert list_urls(dest, ".tar") == [join_url(dest, s["name"]) for s in manifest["shards"]]
    stored, samples = read_set(dest)
    assert stored == manifest and manifest["num_samples"] == len(samples) == 4 and manifest["num_masks"] == 3
    for shard in manifest["shards"]:
        assert hashlib.sha256(read_bytes(join_url(dest, shard["name"]))).hexdigest() == shard["sha256"]
    # an S3 source works too: every file is read through io.py
    for path in (tmp_path / "flowers").rglob("*.jpg"):
        put_file(str(path), join_url(s3_bucket, "src", str(path.relative_to(tmp_path / "flowers"))))
    again = write(flowers_source(join_url(s3_bucket, "src")), f"{s3_bucket}/again", samples_per_shard=2)
    assert [s["sha256"] for s in again["shards"]] == [s["sha256"] for s in manifest["shards"]]
