"""jobs/segment_images.py, segmenting a user's own photos: masks at each photo's displayed size
(EXIF orientation applied) for JPEG/PNG/WebP in nested folders, unreadable files skipped and
reported, existing output refused without --overwrite, one-line errors for bad inputs, the same
masks from a Ray worker as in-process, and photos and masks on S3.

Most tests swap the tiny segmenter's network for an oracle that thresholds brightness, so a mask
can be checked against where the bright object is, not only for its size."""
from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

import cluster.photo_segmenter as photo_segmenter
from cluster.config import load_config
from cluster.segment_images import segment_images
from comgan.artifacts import generator_artifact, segmenter_artifact, to_bytes
from comgan.networks import Generator, UNet
from data_shards.io import join_url, read_bytes, write_bytes
from tests.helpers import exit_code, one_line_error, run_script

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("jobs_segment_images", ROOT / "jobs" / "segment_images.py")
job = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(job)

BRIGHT, DARK = 230, 25


@pytest.fixture(scope="module")
def model():
    return load_config("tiny").model  # a 16 px U-Net


@pytest.fixture(scope="module")
def segmenter_file(tmp_path_factory, model):
    """An untrained tiny segmenter.pt whose last (1x1) layer is shifted and scaled so that about half
    of each test photo is foreground, with decisive probabilities (few near the threshold)."""
    torch.manual_seed(0)
    net = UNet(model.seg_width, model.seg_depth).eval()
    x = torch.from_numpy(np.stack([scene(16, 16), scene(16, 16, top=True)])).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        logits = torch.logit(net(x), eps=1e-6)
        net.out.bias.sub_(logits.median()).mul_(20)
        net.out.weight.mul_(20)
    path = tmp_path_factory.mktemp("artifact") / "segmenter.pt"
    path.write_bytes(to_bytes(segmenter_artifact(net, model)))
    return path


class Oracle(torch.nn.Module):
    """A 'segmenter' that is right about bright objects on dark backgrounds, at any resolution."""

    def forward(self, x):
        return (x.mean(1, keepdim=True) > 0).float()


@pytest.fixture
def oracle(monkeypatch):
    """The job loads (and checks) the real artifact, then runs the oracle instead of its U-Net."""
    real = photo_segmenter.load_segmenter

    def load(obj, expected=None, what="segmenter"):
        _, cfg = real(obj, expected, what)
        return Oracle(), cfg

    monkeypatch.setattr(photo_segmenter, "load_segmenter", load)


def scene(width: int, height: int, top: bool = False) -> np.ndarray:
    """A bright object covering the left 40 % (or, with top, the top 40 %) of a dark photo."""
    img = np.full((height, width, 3), DARK, np.uint8)
    if top:
        img[: int(0.4 * height)] = BRIGHT
    else:
        img[:, : int(0.4 * width)] = BRIGHT
    return img


def expected_mask(width: int, height: int, top: bool = False) -> np.ndarray:
    return scene(width, height, top)[..., 0] > 127


def encode(img: np.ndarray | Image.Image, fmt: str, **options) -> bytes:
    img = Image.fromarray(img) if isinstance(img, np.ndarray) else img
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def sideways_jpeg(width: int, height: int) -> bytes:
    """A photo displayed width x height (object at the top), stored rotated with EXIF orientation 6
    ("rotate 90 degrees clockwise to display"), as phones store portrait photos."""
    stored = Image.fromarray(scene(width, height, top=True)).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(stored, "JPEG", quality=95, exif=exif)
    shown = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    assert Image.open(io.BytesIO(data)).size == (height, width) and shown.size == (width, height)
    assert np.asarray(shown)[0, 0, 0] > 127, "the test photo itself: bright at the top once displayed"
    return data


# name: (file bytes, displayed width, height, object at the top)
def photo_set() -> dict[str, tuple[bytes, int, int, bool]]:
    return {
        "a.jpg": (encode(scene(40, 30), "JPEG", quality=95), 40, 30, False),
        "b.png": (encode(Image.fromarray(scene(25, 50)).convert("RGBA"), "PNG"), 25, 50, False),
        "grey.png": (encode(Image.fromarray(scene(30, 30)).convert("L"), "PNG"), 30, 30, False),
        "c.webp": (encode(scene(33, 17), "WEBP", quality=95), 33, 17, False),
        "nested/deeper/D.JPG": (encode(scene(36, 24), "JPEG", quality=95), 36, 24, False),
        "nested/big.jpeg": (encode(scene(640, 480), "JPEG", quality=95), 640, 480, False),  # decoded at 1/8
        "phone/portrait.jpg": (sideways_jpeg(20, 48), 20, 48, True),
    }


def write_photos(root: Path, photos: dict) -> None:
    for rel, (data, *_) in photos.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def main(*args) -> int:
    return exit_code(job.main, *args)


def mask(path) -> np.ndarray:
    img = Image.open(io.BytesIO(Path(path).read_bytes()))
    assert img.mode == "L" and img.format == "PNG"
    values = np.asarray(img)
    assert set(np.unique(values)) <= {0, 255}
    return values > 127


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return (a & b).sum() / (a | b).sum()


def test_masks_at_each_photos_displayed_size_in_a_mirrored_tree(tmp_path, segmenter_file, oracle, capsys):
    photos = photo_set()
    write_photos(tmp_path / "photos", photos)
    (tmp_path / "photos" / "notes.txt").write_text("not a photo")
    (tmp_path / "photos" / ".DS_Store").write_bytes(b"\0\1")
    (tmp_path / "photos" / "._a.jpg").write_bytes(b"AppleDouble")  # macOS metadata: hidden, not a photo
    out = tmp_path / "masks"
    assert main("--photos", tmp_path / "photos", "--segmenter", segmenter_file, "--out", out, "--batch", 3,
                "--overlays") == 0
    captured = capsys.readouterr()
    assert f"segmented {len(photos)} of {len(photos)} photos" in captured.out
    assert "segmenting:" in captured.err and "warning" not in captured.err

    for rel, (_, width, height, top) in photos.items():
        stem = rel.rsplit(".", 1)[0]
        m = mask(out / f"{stem}.png")
        assert m.shape == (height, width), rel
        assert iou(m, expected_mask(width, height, top)) > 0.85, rel
        overlay = Image.open(out / "overlays" / f"{stem}.jpg")
        assert overlay.size == (width, height)
        shown = np.asarray(overlay.convert("L")).astype(int)
        assert shown[m].mean() > 200 and shown[~m].mean() < 20, f"{rel}: background dimmed, object kept"
    made = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert made == sorted(rel.rsplit(".", 1)[0] + ".png" for rel in photos)

    report = json.loads((out / "segment_report.json").read_text())
    assert report["num_photos"] == report["num_segmented"] == len(photos) and report["skipped"] == []
    assert report["settings"]["resolution"] == 16 and report["settings"]["workers"] == 0
    assert report["photos_per_second"] > 0
    entry = next(e for e in report["segmented"] if e["photo"] == "phone/portrait.jpg")
    assert entry["mask"] == "phone/portrait.png" and entry["size"] == [20, 48]
    assert entry["foreground"] == pytest.approx(0.4, abs=0.05)


def test_flip_averages_each_photo_with_its_mirror_image(tmp_path, segmenter_file, monkeypatch):
    """A network that marks the left half of whatever it sees: alone it marks the left half of the
    photo, averaged with its mirror image it is 0.5 everywhere, which the threshold drops."""
    real = photo_segmenter.load_segmenter

    class LeftHalf(torch.nn.Module):
        def forward(self, x):
            return (torch.arange(x.shape[-1]) < x.shape[-1] // 2).float().expand_as(x[:, :1])

    monkeypatch.setattr(photo_segmenter, "load_segmenter",
                        lambda obj, expected=None, what="": (LeftHalf(), real(obj)[1]))
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.png").write_bytes(encode(scene(32, 32), "PNG"))
    assert main("--photos", tmp_path / "photos", "--segmenter", segmenter_file, "--out", tmp_path / "plain", "--quiet") == 0
    assert main("--photos", tmp_path / "photos", "--segmenter", segmenter_file, "--out", tmp_path / "flip", "--quiet",
                "--flip") == 0
    assert mask(tmp_path / "plain" / "a.png")[:, :16].all() and not mask(tmp_path / "plain" / "a.png")[:, 16:].any()
    assert not mask(tmp_path / "flip" / "a.png").any()
    assert json.loads((tmp_path / "flip" / "segment_report.json").read_text())["settings"]["flip"] is True
    assert main("--photos", tmp_path / "photos", "--segmenter", segmenter_file, "--out", tmp_path / "colour",
                "--quiet", "--colour-refine") == 0
    assert json.loads((tmp_path / "colour" / "segment_report.json").read_text())["settings"]["colour"] is True
    assert mask(tmp_path / "colour" / "a.png").shape == mask(tmp_path / "plain" / "a.png").shape


def test_unreadable_files_are_reported_and_skipped(tmp_path, segmenter_file, oracle, capsys):
    good = encode(scene(40, 30), "JPEG", quality=95)
    (tmp_path / "photos" / "sub").mkdir(parents=True)
    (tmp_path / "photos" / "good.jpg").write_bytes(good)
    (tmp_path / "photos" / "sub" / "text.jpg").write_text("this is not an image")
    (tmp_path / "photos" / "cut.jpg").write_bytes(good[: len(good) // 2])
    out = tmp_path / "masks"
    assert main("--photos", tmp_path / "photos", "--segmenter", segmenter_file, "--out", out) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2 and "Traceback" not in captured.err
    assert any("sub/text.jpg: not a readable image" in w for w in warnings), warnings
    assert any("cut.jpg: not a readable image (OSError: " in w for w in warnings), warnings  # truncated
    assert "segmented 1 of 3 photos (2 skipped" in captured.out
    assert mask(out / "good.png").shape == (30, 40)
    assert not (out / "cut.png").exists() and not (out / "sub").exists()
    report = json.loads((out / "segment_report.json").read_text())
    assert [e["photo"] for e in report["segmented"]] == ["good.jpg"]
    assert [e["photo"] for e in report["skipped"]] == ["cut.jpg", "sub/text.jpg"]
    assert all(e["reason"].startswith("not a readable image") for e in report["skipped"])

    # nothing usable at all: exit 1 with one line, and the report says why
    (tmp_path / "photos" / "good.jpg").unlink()
    code = main("--photos", tmp_path / "photos", "--segmenter", segmenter_file, "--out", tmp_path / "none",
                "--quiet")
    err = capsys.readouterr().err
    assert code == 1 and err.splitlines()[-1].startswith("error: none of the 2 photos could be segmented"), err
    assert json.loads((tmp_path / "none" / "segment_report.json").read_text())["num_segmented"] == 0


def test_existing_output_is_refused_without_overwrite(tmp_path, segmenter_file, oracle, capsys):
    write_photos(tmp_path / "photos", {k: v for k, v in photo_set().items() if k in ("a.jpg", "c.webp")})
    out = tmp_path / "masks"
    args = ("--photos", tmp_path / "photos", "--segmenter", segmenter_file, "--out", out, "--quiet")
    assert main(*args) == 0
    capsys.readouterr()
    (out / "a.png").write_bytes(b"keep me")
    one_line_error(main(*args), capsys.readouterr().err, "3 output file(s) already exist", "--overwrite")
    assert (out / "a.png").read_bytes() == b"keep me", "refused before anything was written"

    (out / "a.png").unlink()
    (out / "c.png").unlink()
    one_line_error(main(*args), capsys.readouterr().err, "1 output file(s) already exist", "segment_report.json")

    assert main(*args, "--overwrite") == 0
    assert mask(out / "a.png").shape == (30, 40) and mask(out / "c.png").shape == (17, 33)


def test_a_generator_artifact_is_refused_in_one_line(tmp_path, model, capsys):
    write_photos(tmp_path / "photos", {"a.jpg": photo_set()["a.jpg"]})
    generator = tmp_path / "generator.pt"
    generator.write_bytes(to_bytes(generator_artifact(Generator(model), model)))
    code = main("--photos", tmp_path / "photos", "--segmenter", generator, "--out", tmp_path / "masks")
    one_line_error(code, capsys.readouterr().err, str(generator), "'comgan.generator' file, not a segmenter")
    assert not (tmp_path / "masks").exists()


def test_a_segmenter_that_asks_for_a_huge_network_is_refused_in_one_line(tmp_path, model, capsys):
    """A 1 KB file whose model section says seg_width=200000 is refused before S is built (it
    would need 1.4 TB), not run until the machine runs out of memory."""
    write_photos(tmp_path / "photos", {"a.jpg": photo_set()["a.jpg"]})
    forged = tmp_path / "segmenter.pt"
    forged.write_bytes(to_bytes({"kind": "comgan.segmenter", "format": 1, "state_dict": {},
                                 "model": {**asdict(model), "seg_width": 200000}}))
    code = main("--photos", tmp_path / "photos", "--segmenter", forged, "--out", tmp_path / "masks")
    one_line_error(code, capsys.readouterr().err, str(forged), "model.seg_width=200000", "an artifact may have at most")
    assert not (tmp_path / "masks").exists()


@pytest.mark.parametrize("case, words", [
    ("missing photos", ["does not exist"]),
    ("unknown scheme", ["foo://x/photos", "unknown URL scheme 'foo'", "s3://"]),
    ("photos is a file", ["is a file, not a folder"]),
    ("no photos", ["no photos in", ".webp"]),
    ("out inside photos", ["lies inside the photos folder"]),
    ("out is a file", ["is a file, not a folder"]),
    ("same stem", ["'x.jpg' and 'x.png' would both write the mask x.png"]),
    ("missing segmenter", ["does not exist"]),
    ("not a torch file", ["is not a readable torch file"]),
    ("threshold", ["--threshold", "between 0 and 1"]),
    ("batch", ["--batch", "must be >= 1"]),
    ("abbreviated option", ["unrecognized arguments: --colour"]),
])
def test_bad_inputs_are_one_line_errors(tmp_path, segmenter_file, capsys, case, words):
    photos, out, segmenter = tmp_path / "photos", tmp_path / "masks", segmenter_file
    photos.mkdir()
    (photos / "a.jpg").write_bytes(photo_set()["a.jpg"][0])
    extra = []
    if case == "missing photos":
        photos = tmp_path / "nowhere"
    elif case == "unknown scheme":
        photos = "foo://x/photos"
    elif case == "photos is a file":
        photos = photos / "a.jpg"
    elif case == "no photos":
        (photos / "a.jpg").unlink()
        (photos / "readme.txt").write_text("no photos here")
    elif case == "out inside photos":
        out = photos / "masks"
    elif case == "out is a file":
        out = tmp_path / "out.txt"
        out.write_text("a file")
    elif case == "same stem":
        (photos / "x.jpg").write_bytes(photo_set()["a.jpg"][0])
        (photos / "x.png").write_bytes(photo_set()["b.png"][0])
    elif case == "missing segmenter":
        segmenter = tmp_path / "no-segmenter.pt"
    elif case == "not a torch file":
        segmenter = photos / "a.jpg"
    elif case == "threshold":
        extra = ["--threshold", "1.5"]
    elif case == "batch":
        extra = ["--batch", "0"]
    elif case == "abbreviated option":
        extra = ["--colour"]  # not taken for --colour-refine
    code = main("--photos", photos, "--segmenter", segmenter, "--out", out, *extra)
    one_line_error(code, capsys.readouterr().err, *words)
    assert not out.exists() or out.is_file()


@pytest.mark.ray
def test_a_ray_worker_writes_the_same_masks_as_this_process(local_ray, tmp_path, segmenter_file, capsys):
    """The real (untrained) U-Net this time: the oracle would not reach the Ray worker."""
    photos = photo_set()
    write_photos(tmp_path / "photos", photos)
    (tmp_path / "photos" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    common = ("--photos", tmp_path / "photos", "--segmenter", segmenter_file, "--batch", 2, "--quiet")
    assert main(*common, "--out", tmp_path / "here") == 0
    assert main(*common, "--out", tmp_path / "ray", "--workers", 1) == 0
    err = capsys.readouterr().err
    assert err.count("warning: skipped broken.png") == 2, err
    here = json.loads((tmp_path / "here" / "segment_report.json").read_text())
    there = json.loads((tmp_path / "ray" / "segment_report.json").read_text())
    assert there["settings"]["workers"] == 1 and there["skipped"] == here["skipped"]
    assert [(e["photo"], e["size"]) for e in there["segmented"]] == [(e["photo"], e["size"]) for e in here["segmented"]]
    foreground = []
    for rel in photos:
        stem = rel.rsplit(".", 1)[0]
        a, b = mask(tmp_path / "here" / f"{stem}.png"), mask(tmp_path / "ray" / f"{stem}.png")
        assert a.shape == b.shape, rel
        # same computation; a last-bit difference between thread counts may flip a pixel at exactly 0.5
        assert (a != b).mean() <= 1e-3, rel
        foreground.append(a.mean())
    assert 0 < np.mean(foreground) < 1, "the U-Net's masks are not trivially empty or full"

    # more workers than the local cluster's 2 CPUs hold: refused before any actor would wait forever
    code = main(*common, "--out", tmp_path / "more", "--workers", 3)
    one_line_error(code, capsys.readouterr().err, "--workers 3", "1 CPU missing")


def test_photos_and_masks_on_s3(s3_bucket, tmp_path, segmenter_file, oracle, capsys):
    photos = {k: v for k, v in photo_set().items() if k in ("a.jpg", "nested/deeper/D.JPG", "phone/portrait.jpg")}
    for rel, (data, *_) in photos.items():
        write_bytes(join_url(s3_bucket, "photos", rel), data)
    segmenter = join_url(s3_bucket, "runs", "x", "segmenter.pt")
    write_bytes(segmenter, segmenter_file.read_bytes())
    out = join_url(s3_bucket, "masks")
    args = ("--photos", join_url(s3_bucket, "photos"), "--segmenter", segmenter, "--out", out, "--quiet")
    assert main(*args) == 0
    assert "segmented 3 of 3 photos in" in capsys.readouterr().out
    for rel, (_, width, height, top) in photos.items():
        data = read_bytes(join_url(out, rel.rsplit(".", 1)[0] + ".png"))
        m = np.asarray(Image.open(io.BytesIO(data))) > 127
        assert m.shape == (height, width) and iou(m, expected_mask(width, height, top)) > 0.85, rel
    assert json.loads(read_bytes(join_url(out, "segment_report.json")))["num_segmented"] == 3
    one_line_error(main(*args), capsys.readouterr().err, "4 output file(s) already exist", f"{out}/a.png")


# ---------------------------------------------------------------------------------------------
# Issue 27 point 16: bounded memory with --overlays, a report written as the job goes, --resume

def _interrupt_at_batch(monkeypatch, n):
    """The network raises KeyboardInterrupt (Ctrl-C) on its n-th batch."""
    real = photo_segmenter.PhotoSegmenter.probabilities
    calls = []

    def probabilities(self, batch):
        calls.append(len(batch))
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(self, batch)

    monkeypatch.setattr(photo_segmenter.PhotoSegmenter, "probabilities", probabilities)


FIVE = ("a.jpg", "b.png", "grey.png", "c.webp", "nested/deeper/D.JPG")


def test_a_report_exists_after_the_first_batch(tmp_path, segmenter_file, oracle, monkeypatch):
    write_photos(tmp_path / "photos", {k: v for k, v in photo_set().items() if k in FIVE})
    out = tmp_path / "masks"
    _interrupt_at_batch(monkeypatch, 3)  # batch 1's files are written once batch 2 is computed
    with pytest.raises(KeyboardInterrupt):
        segment_images(str(tmp_path / "photos"), str(segmenter_file), str(out),
                       photo_segmenter.Settings(batch=2, io_threads=1, device="cpu"), progress=False)
    report = json.loads((out / "segment_report.json").read_text())
    assert report["complete"] is False and report["num_photos"] == 5
    assert [e["photo"] for e in report["segmented"]][:2] == ["a.jpg", "b.png"]
    assert all((out / e["mask"]).exists() for e in report["segmented"])
    assert not [p for p in out.rglob("*") if ".partial" in p.name]


def test_resume_skips_photos_whose_mask_exists_and_the_report_accounts_for_them(tmp_path, segmenter_file, oracle,
                                                                              monkeypatch, capsys):
    photos = {k: v for k, v in photo_set().items() if k in FIVE}
    write_photos(tmp_path / "photos", photos)
    out = tmp_path / "masks"
    args = ("--photos", tmp_path / "photos", "--segmenter", segmenter_file, "--out", out, "--overlays",
            "--batch", "2", "--io-threads", "1", "--device", "cpu", "--quiet")
    with monkeypatch.context() as m:
        _interrupt_at_batch(m, 3)
        assert main(*args) == job.EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert "--resume" in err, err
    done_before = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    assert {"a.png", "b.png"} <= set(done_before) and len(done_before) < 5
    marker = b"not redone"
    (out / "a.png").write_bytes(marker)  # a photo with its mask and overlay: left alone
    (out / "overlays" / "b.jpg").unlink()  # the mask without its overlay: done again

    one_line_error(main(*args), capsys.readouterr().err, "already exist", "--resume")  # refused without --resume
    one_line_error(main(*args, "--resume", "--overwrite"), capsys.readouterr().err, "not allowed with")

    assert main(*args, "--resume") == 0
    assert "(%d done by an earlier run)" % (len(done_before) - 1) in capsys.readouterr().out
    assert (out / "a.png").read_bytes() == marker
    assert mask(out / "b.png").shape == (50, 25) and (out / "overlays" / "b.jpg").exists()
    report = json.loads((out / "segment_report.json").read_text())
    assert report["complete"] is True and report["num_segmented"] == 5 and report["num_skipped"] == 0
    assert report["num_resumed"] == len(done_before) - 1
    entries = {e["photo"]: e for e in report["segmented"]}
    assert [e["photo"] for e in report["segmented"]] == sorted(photos)
    assert entries["a.jpg"]["resumed"] is True and entries["a.jpg"]["size"] == [40, 30], "kept from the first report"
    assert not entries["b.png"].get("resumed")
    for rel, (_, w, h, _) in photos.items():
        if rel != "a.jpg":
            assert mask(out / (rel.rsplit(".", 1)[0] + ".png")).shape == (h, w)
            assert (out / "overlays" / (rel.rsplit(".", 1)[0] + ".jpg")).exists()


# ---------------------------------------------------------------------------------------------
# Issue 27 points 13 and 16, parts without a test of their own

def test_the_report_names_urls_without_their_credentials(tmp_path, segmenter_file, oracle, capsys):
    """segment_report.json (named in the issue) and the job's lines hold no user:password@."""
    photos, segmenter = "memory://AKIA:secret@bucket/photos", "memory://AKIA:secret@bucket/segmenter.pt"
    write_bytes(segmenter, segmenter_file.read_bytes())
    write_bytes(join_url(photos, "a.jpg"), photo_set()["a.jpg"][0])
    write_bytes(join_url(photos, "bad.jpg"), b"not an image")
    out = tmp_path / "masks"
    assert main("--photos", photos, "--segmenter", segmenter, "--out", out) == 0
    captured = capsys.readouterr()
    text = (out / "segment_report.json").read_text()
    report = json.loads(text)
    assert report["photos"] == "memory://REDACTED@bucket/photos"
    assert report["segmenter"] == "memory://REDACTED@bucket/segmenter.pt"
    assert [e["photo"] for e in report["segmented"]] == ["a.jpg"]
    assert "secret" not in text and "secret" not in captured.out + captured.err


def test_the_report_is_on_disk_while_the_job_runs(tmp_path, segmenter_file, oracle, monkeypatch):
    """A job killed outright (kill -9, the OOM killer) runs no handler: the report must already be
    on disk, listing what was written, before the job ends."""
    write_photos(tmp_path / "photos", {k: v for k, v in photo_set().items() if k in FIVE})
    out = tmp_path / "masks"
    real = photo_segmenter.PhotoSegmenter.probabilities
    seen = []

    def probabilities(self, batch):
        if len(seen) == 2:  # batch 3 is next: batch 1's files are written (as in _interrupt_at_batch)
            report = out / "segment_report.json"
            seen.append(json.loads(report.read_text()) if report.exists() else None)
        else:
            seen.append("-")
        return real(self, batch)

    monkeypatch.setattr(photo_segmenter.PhotoSegmenter, "probabilities", probabilities)
    segment_images(str(tmp_path / "photos"), str(segmenter_file), str(out),
                   photo_segmenter.Settings(batch=2, io_threads=1, device="cpu"), progress=False)
    during = seen[2]
    assert during is not None, "no report on disk while the job ran"
    assert during["complete"] is False and [e["photo"] for e in during["segmented"]][:2] == ["a.jpg", "b.png"]


def test_at_most_full_size_at_once_photos_are_worked_on_at_full_size(tmp_path, segmenter_file, oracle, monkeypatch):
    """4 writer threads must not hold 4 full-size photos at once (a 48 MP one is about 0.7 GB)."""
    import threading
    import time

    photos = photo_set()
    write_photos(tmp_path / "photos", photos)
    real, lock, active, peak = photo_segmenter.full_size_mask, threading.Lock(), [0], [0]

    def counted(*args, **kwargs):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            time.sleep(0.05)  # long enough for the other writers to pile in
            return real(*args, **kwargs)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(photo_segmenter, "full_size_mask", counted)
    segment_images(str(tmp_path / "photos"), str(segmenter_file), str(tmp_path / "masks"),
                   photo_segmenter.Settings(batch=len(photos), io_threads=4, device="cpu", overlays=True),
                   progress=False)
    assert 1 <= peak[0] <= photo_segmenter.FULL_SIZE_AT_ONCE, peak[0]


needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")


def run_job(*args) -> subprocess.CompletedProcess:
    """The job in a subprocess, so that a hang fails the test (after 60 s) instead of stalling it."""
    return run_script("jobs/segment_images.py", *args, timeout=60)


@needs_fifo
def test_a_named_pipe_among_the_photos_is_skipped_with_a_reason(tmp_path, segmenter_file):
    """Opening a FIFO for reading waits for a writer forever; it is no photo."""
    write_photos(tmp_path / "photos", {"a.jpg": photo_set()["a.jpg"]})
    os.mkfifo(tmp_path / "photos" / "b.jpg")
    out = tmp_path / "masks"
    p = run_job("--photos", tmp_path / "photos", "--segmenter", segmenter_file, "--out", out, "--quiet")
    assert p.returncode == 0, p.stderr
    assert "warning: skipped b.jpg: cannot be read" in p.stderr and "named pipe" in p.stderr
    report = json.loads((out / "segment_report.json").read_text())
    assert [e["photo"] for e in report["segmented"]] == ["a.jpg"]
    assert [e["photo"] for e in report["skipped"]] == ["b.jpg"] and "named pipe" in report["skipped"][0]["reason"]


@needs_fifo
def test_a_named_pipe_as_the_segmenter_is_one_line(tmp_path):
    write_photos(tmp_path / "photos", {"a.jpg": photo_set()["a.jpg"]})
    os.mkfifo(tmp_path / "segmenter.pt")
    p = run_job("--photos", tmp_path / "photos", "--segmenter", tmp_path / "segmenter.pt", "--out", tmp_path / "m")
    one_line_error(p.returncode, p.stderr, str(tmp_path / "segmenter.pt"), "not a regular file", "named pipe")
    assert not (tmp_path / "m").exists()
