"""jobs/make_shards.py as a user runs it: help, each converter end to end, progress and summary
lines, refusing an existing set, and one-line errors (exit 2, no traceback) for bad input."""
from __future__ import annotations

import json
import os

import pytest

from tests.data_shards.fake_datasets import (make_cub, make_flowers, make_folder, read_set, write_plain_tars,
                                          write_set)
from tests.helpers import one_line_error, run_script


def run(*args):
    return run_script("jobs/make_shards.py", *args)


def test_help_explains_every_converter_and_option():
    top = run("--help")
    assert top.returncode == 0
    for example in ("make_shards.py folder ", "make_shards.py images ", "make_shards.py cub ", "--crop-bbox",
                    "make_shards.py flowers ", "make_shards.py synthetic ", "s3://", "make_shards.py index '"):
        assert example in top.stdout
    options = {"folder": ["--masks"], "images": [], "cub": ["--split", "--crop-bbox", "--bbox-scale"], "flowers": [],
               "synthetic": ["--count", "--resolution", "--styles", "--seed"]}
    for name, own in options.items():
        p = run(name, "--help")
        assert p.returncode == 0 and f"make_shards.py {name} " in p.stdout
        common = ["--samples-per-shard", "--shard-bytes", "--overwrite", "DEST"]
        if name != "synthetic":
            common += ["SOURCE", "--resize", "--limit", "--shuffle-seed", "--no-shuffle", "--workers"]
        for option in common + own:
            assert option in p.stdout, (name, option)
    p = run("index", "--help")
    assert p.returncode == 0 and "make_shards.py index '" in p.stdout
    assert all(option in p.stdout for option in ("URL", "--overwrite", "--quiet"))


def test_cub_end_to_end(tmp_path):
    make_cub(tmp_path / "CUB")
    dest = tmp_path / "out"
    p = run("cub", tmp_path / "CUB", dest, "--split", "train", "--crop-bbox", "--samples-per-shard", "2")
    assert p.returncode == 0, p.stderr
    manifest, samples = read_set(str(dest))
    assert manifest["num_samples"] == len(samples) == 5 and manifest["has_masks"]
    assert [s["num_samples"] for s in manifest["shards"]] == [2, 2, 1]
    assert manifest["converter"]["name"] == "cub"
    options = manifest["converter"]["options"]
    assert options["split"] == "train" and options["crop_bbox"] is True and options["bbox_scale"] == 1.5
    assert options["source"] == str(tmp_path / "CUB") and options["samples_per_shard"] == 2
    assert all("crop" in json.loads(f["json"]) for f in samples.values())
    # not a terminal: progress lines (count/total, rate, ETA), one per shard, a summary on stdout
    assert "cub: 5/5 samples (100%)" in p.stderr and "samples/s" in p.stderr and "ETA" in p.stderr
    assert p.stderr.count("wrote shard-") == 3 and "\r" not in p.stderr
    assert p.stdout.startswith("wrote 5 samples (5 with masks) in 3 shards") and "skipped none" in p.stdout


def test_folder_reports_skipped_files(tmp_path):
    make_folder(tmp_path / "src", tmp_path / "masks")
    p = run("folder", tmp_path / "src", tmp_path / "out", "--masks", tmp_path / "masks", "--shard-bytes", "15KB")
    assert p.returncode == 0, p.stderr
    assert "warning: skipped broken.jpg: unreadable image" in p.stderr
    assert "wrote 6 samples (4 with masks)" in p.stdout and "skipped 1 (unreadable image: 1)" in p.stdout
    manifest, _ = read_set(str(tmp_path / "out"))
    assert manifest["skipped"] == {"unreadable image": 1} and manifest["converter"]["options"]["shard_bytes"] == 15000
    assert len(manifest["shards"]) > 1 and all(s["bytes"] <= 15000 for s in manifest["shards"])


def test_flowers_images_and_synthetic(tmp_path):
    make_flowers(tmp_path / "flowers")
    p = run("flowers", tmp_path / "flowers", tmp_path / "fl", "--resize", "24", "--quiet")
    assert p.returncode == 0 and p.stderr == "", p.stderr
    manifest, _ = read_set(str(tmp_path / "fl"))
    assert manifest["num_masks"] == 3 and manifest["min_resolution"][0] == 24

    p = run("images", tmp_path / "flowers" / "jpg", tmp_path / "im", "--limit", "2")
    assert p.returncode == 0, p.stderr
    manifest, samples = read_set(str(tmp_path / "im"))
    assert manifest["num_samples"] == 2 and manifest["num_masks"] == 0 and manifest["converter"]["name"] == "images"

    p = run("synthetic", tmp_path / "syn", "--count", "12", "--resolution", "16", "--styles", "3", "--seed", "4",
            "--samples-per-shard", "5")
    assert p.returncode == 0, p.stderr
    manifest, samples = read_set(str(tmp_path / "syn"))
    assert manifest["num_samples"] == 12 and manifest["has_masks"] and manifest["max_resolution"] == [16, 16]
    assert manifest["info"]["seed"] == 4 and [s["num_samples"] for s in manifest["shards"]] == [5, 5, 2]


def test_refuses_existing_set_then_overwrites_and_cleans_up(tmp_path):
    dest = tmp_path / "set"
    assert run("synthetic", dest, "--count", "10", "--resolution", "8", "--samples-per-shard", "2").returncode == 0
    assert len(list(dest.glob("shard-*.tar"))) == 5
    before = (dest / "manifest.json").read_text()
    p = run("synthetic", dest, "--count", "4", "--resolution", "8")
    one_line_error(p.returncode, p.stderr, str(dest), "--overwrite")
    assert (dest / "manifest.json").read_text() == before
    p = run("synthetic", dest, "--count", "10", "--resolution", "8", "--samples-per-shard", "4", "--overwrite")
    assert p.returncode == 0, p.stderr
    assert sorted(os.listdir(dest)) == ["manifest.json", "shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]


def test_plain_tars_of_our_names_are_refused_and_overwrite_replaces_only_what_it_writes(tmp_path):
    """A folder of another tool's shard-NNNNNN.tar without manifest.json is data, not ours: refused
    without --overwrite; with it, only the names the new set writes are replaced, no tar deleted."""
    dest = tmp_path / "plain"
    write_plain_tars(dest, name="shard-%06d.tar")
    (dest / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in dest.iterdir()}
    p = run("synthetic", dest, "--count", "4", "--resolution", "8")
    one_line_error(p.returncode, p.stderr, str(dest), "not empty", "--overwrite")
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == before
    p = run("synthetic", dest, "--count", "4", "--resolution", "8", "--overwrite", "--quiet")
    assert p.returncode == 0, p.stderr
    after = {p.name: p.read_bytes() for p in dest.iterdir()}
    assert sorted(after) == sorted([*before, "manifest.json"])
    assert {n: after[n] for n in ("shard-000001.tar", "shard-000002.tar", "notes.txt")} == \
        {n: before[n] for n in ("shard-000001.tar", "shard-000002.tar", "notes.txt")}


def test_overwrite_never_deletes_tars_an_index_manifest_lists(tmp_path):
    """manifest.json of `index` lists a user's own tars: a new set written over it keeps them all."""
    dest = tmp_path / "indexed"
    write_plain_tars(dest, name="shard-%06d.tar")
    assert run("index", dest, "--quiet").returncode == 0
    p = run("synthetic", dest, "--count", "4", "--resolution", "8")
    one_line_error(p.returncode, p.stderr, "already holds a shard set")
    kept = {n: (dest / n).read_bytes() for n in ("shard-000001.tar", "shard-000002.tar")}
    assert run("synthetic", dest, "--count", "4", "--resolution", "8", "--overwrite", "--quiet").returncode == 0
    assert {n: (dest / n).read_bytes() for n in kept} == kept
    assert read_set(str(dest))[0]["num_samples"] == 4


@pytest.mark.parametrize("case", ["file_in_folder", "hidden_file", "dest_is_a_file"])
def test_any_destination_that_holds_something_is_refused(tmp_path, case):
    dest = tmp_path / "out"
    mine = {"file_in_folder": dest / "photo.jpg", "hidden_file": dest / ".keep", "dest_is_a_file": dest}[case]
    mine.parent.mkdir(exist_ok=True)
    mine.write_text("mine")
    p = run("synthetic", dest, "--count", "4", "--resolution", "8")
    one_line_error(p.returncode, p.stderr, str(dest), "--overwrite")
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == [mine] and mine.read_text() == "mine"


def test_an_empty_folder_is_a_fine_destination(tmp_path):
    (tmp_path / "out").mkdir()
    assert run("synthetic", tmp_path / "out", "--count", "4", "--resolution", "8", "--quiet").returncode == 0


@pytest.mark.parametrize("case", ["missing_source", "no_images_txt", "empty_folder", "no_masks_folder", "bad_size",
                                  "no_jpg", "bad_number", "unknown_converter", "unknown_scheme", "dest_under_a_file"])
def test_user_errors_are_one_line(tmp_path, case):
    (tmp_path / "empty").mkdir()
    make_folder(tmp_path / "src", tmp_path / "masks")
    dest = tmp_path / "out"
    args, words = {
        "missing_source": (["folder", tmp_path / "nope", dest], ["does not exist"]),
        "no_images_txt": (["cub", tmp_path / "empty", dest], ["images.txt not found"]),
        "empty_folder": (["images", tmp_path / "empty", dest], ["no images in"]),
        "no_masks_folder": (["folder", tmp_path / "src", dest, "--masks", tmp_path / "nomasks"], ["masks folder"]),
        "bad_size": (["images", tmp_path / "src", dest, "--shard-bytes", "lots"], ["--shard-bytes", "not a size"]),
        "no_jpg": (["flowers", tmp_path / "src", dest], ["jpg/ not found"]),
        "bad_number": (["images", tmp_path / "src", dest, "--limit", "0"], ["--limit", "must be > 0"]),
        "unknown_converter": (["coco", tmp_path / "src", dest], ["invalid choice: 'coco'"]),
        "unknown_scheme": (["synthetic", "foo://x/out", "--count", "4"], ["foo://x/out", "unknown URL scheme 'foo'"]),
        "dest_under_a_file": (["synthetic", tmp_path / "f" / "out", "--count", "4", "--resolution", "8"],
                              [str(tmp_path / "f"), "is a file, not a folder"]),
    }[case]
    (tmp_path / "f").write_text("mine")
    p = run(*args)
    one_line_error(p.returncode, p.stderr, *words)
    assert not (dest / "manifest.json").exists()


def test_destinations_by_url(tmp_path, s3_bucket):
    """file:// and s3:// (the moto server, found through the AWS environment) take the same CLI."""
    from data_shards.index import read_manifest

    for dest in (f"file://{tmp_path}/synth", f"{s3_bucket}/synth"):
        p = run("synthetic", dest, "--count", 30, "--resolution", 16, "--samples-per-shard", 10, "--quiet")
        assert p.returncode == 0, p.stderr
        manifest = read_manifest(dest)
        assert manifest["num_samples"] == 30 and len(manifest["shards"]) == 3
    assert (tmp_path / "synth" / "manifest.json").exists()
    # an object store's prefix that holds anything is refused too, and the object kept
    from data_shards.io import read_bytes, write_bytes

    write_bytes(f"{s3_bucket}/photos/a.jpg", b"mine")
    p = run("synthetic", f"{s3_bucket}/photos", "--count", 4, "--resolution", 8)
    one_line_error(p.returncode, p.stderr, "not empty")
    p = run("synthetic", f"{s3_bucket}/synth", "--count", 4, "--resolution", 8)
    one_line_error(p.returncode, p.stderr, "already holds a shard set")
    assert read_bytes(f"{s3_bucket}/photos/a.jpg") == b"mine"


# ---------------------------------------------------------------------------------------------
# index: plain WebDataset tars in place

def test_index_writes_a_manifest_beside_plain_tars_without_copying(tmp_path):
    folder = tmp_path / "plain"
    keys = write_plain_tars(folder, without_masks=(1,))
    tars = {p.name: p.read_bytes() for p in folder.iterdir()}
    p = run("index", folder)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("indexed 15 samples (10 with masks) in 3 shards") and "fields used: jpg, jpeg, png, mask.png, mask.jpg;" in \
        p.stdout and f"wrote {folder}/manifest.json" in p.stdout
    assert "index: 3/3 shards (100%)" in p.stderr and "Traceback" not in p.stderr
    assert sorted(os.listdir(folder)) == sorted([*tars, "manifest.json"])
    assert all((folder / n).read_bytes() == data for n, data in tars.items())  # not a byte of them changed
    manifest, samples = read_set(str(folder))
    assert manifest["indexed"] and manifest["num_samples"] == len(samples) == 15 and sorted(samples) == keys
    assert [(s["name"], s["num_samples"], s["num_masks"], s["bytes"]) for s in manifest["shards"]] == \
        [(n, 5, 0 if n.endswith("1.tar") else 5, len(tars[n])) for n in sorted(tars)]
    assert not manifest["has_masks"] and manifest["mask_keys"] == {"mask.png": 5, "mask.jpg": 5}

    before = (folder / "manifest.json").read_text()
    p = run("index", folder)
    one_line_error(p.returncode, p.stderr, f"{folder}/manifest.json already exists", "--overwrite")
    assert (folder / "manifest.json").read_text() == before
    p = run("index", folder, "--overwrite", "--quiet")
    assert p.returncode == 0 and p.stderr == "", p.stderr


def test_index_of_a_brace_pattern_lists_just_its_shards(tmp_path):
    from data_shards.index import read_manifest

    write_plain_tars(tmp_path / "plain", per_shard=(3, 4, 5, 6))
    p = run("index", f"{tmp_path}/plain/photos-{{0001..0002}}.tar")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("indexed 9 samples (9 with masks) in 2 shards")
    manifest = json.loads((tmp_path / "plain" / "manifest.json").read_text())
    assert [s["name"] for s in manifest["shards"]] == ["photos-0001.tar", "photos-0002.tar"]
    assert read_manifest(f"{tmp_path}/plain/photos-{{0001..0002}}.tar") == manifest
    assert read_manifest(str(tmp_path / "plain")) == manifest  # the folder is now that set


@pytest.mark.parametrize("case", ["no_match", "no_tars", "no_images"])
def test_index_user_errors_are_one_line(tmp_path, case):
    write_plain_tars(tmp_path / "plain", per_shard=(2,))
    (tmp_path / "empty").mkdir()
    write_set(tmp_path / "odd", [[{"__key__": "a", "picture.jpg": b"x", "json": b"{}"}]])
    (tmp_path / "odd" / "manifest.json").unlink()
    args, words = {
        "no_match": ([f"{tmp_path}/plain/photos-{{0003..0005}}.tar"], ["matches no existing shard", "photos-0003.tar"]),
        "no_tars": ([tmp_path / "empty"], ["manifest.json not found and no .tar files"]),
        # found after counting, when progress lines were printed: --quiet leaves the error alone
        "no_images": ([tmp_path / "odd", "--quiet"], ["none of its 1 samples has an image", "fields seen: json, picture.jpg",
                                           "jpg, jpeg, png or webp"]),
    }[case]
    p = run("index", *args)
    one_line_error(p.returncode, p.stderr, *words)
    assert not list(tmp_path.rglob("manifest.json"))


def test_the_manifest_records_urls_without_their_credentials():
    from jobs.make_shards import _recorded_options, parse_args

    source = "https://host/photos?X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature=feedface0123"
    options = _recorded_options(parse_args(["images", source, "s3://AKIA:secret@bucket/out"]))
    assert options["source"] == "https://host/photos?X-Amz-Credential=REDACTED&X-Amz-Signature=REDACTED"
    assert options["dest"] == "s3://REDACTED@bucket/out"
    assert not any(s in json.dumps(options) for s in ("AKIAEXAMPLE", "feedface0123", "secret"))
