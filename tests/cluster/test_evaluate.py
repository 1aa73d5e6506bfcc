"""Evaluation: baselines on tiny images, scoring at another resolution than the model's."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cluster.baselines import grabcut, grabcut_batch
from cluster.config import load_config
from cluster.evaluate import evaluate, format_table
from comgan.inference import mirror_averaged, predict
from comgan.artifacts import segmenter_artifact, to_bytes
from comgan.networks import UNet
from data_shards.writer import write_shards
from tests.helpers import exit_code, one_line_error


def disc_scene(size: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """A bright noisy disc on a dark noisy background, and its mask."""
    y, x = np.mgrid[:size, :size]
    cy, cx = rng.uniform(0.4, 0.6, 2) * size
    r = size * rng.uniform(0.2, 0.3)
    mask = (y - cy) ** 2 + (x - cx) ** 2 < r ** 2
    image = np.where(mask[..., None], [220, 180, 40], [30, 60, 90]) + rng.normal(0, 10, (size, size, 3))
    return image.clip(0, 255).astype(np.uint8), mask


def test_grabcut_finds_a_clear_object_inside_the_inset_rectangle():
    image, mask = disc_scene(64, np.random.default_rng(0))
    found = grabcut(image)
    iou = (found & mask).sum() / (found | mask).sum()
    assert iou > 0.9
    flat = np.full((16, 16, 3), 128, np.uint8)  # nothing to separate: must still return a mask
    assert grabcut(flat).shape == (16, 16)
    batch = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1
    assert torch.equal(grabcut_batch(batch)[0, 0], torch.from_numpy(found))


class Oracle(torch.nn.Module):
    """A 'segmenter' that thresholds brightness: right on disc scenes at any resolution."""

    def forward(self, x):
        return (x.mean(1, keepdim=True) > -0.1).float()


def test_predictions_are_upsampled_to_the_scoring_size():
    image, mask = disc_scene(64, np.random.default_rng(1))
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1
    pred = predict(Oracle(), x, resolution=16, threshold=0.5)
    assert pred.shape == (1, 1, 64, 64)
    iou = (pred[0, 0] & torch.from_numpy(mask)).sum() / (pred[0, 0] | torch.from_numpy(mask)).sum()
    assert iou > 0.85, "a 16 px prediction upsampled keeps the disc"


class LeftHalf(torch.nn.Module):
    """A 'segmenter' that marks the left half of any image: the mirror image's mask is the right half."""

    def forward(self, x):
        mask = torch.zeros_like(x[:, :1])
        mask[..., : x.shape[-1] // 2] = 1
        return mask


def test_flip_averages_the_mirror_images_mask_mirrored_back():
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    torch.testing.assert_close(mirror_averaged(LeftHalf(), x), torch.full((2, 1, 8, 8), 0.5))
    image, _ = disc_scene(32, np.random.default_rng(3))
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1
    plain = predict(Oracle(), x, resolution=16, threshold=0.5)  # the oracle sees colours only
    assert torch.equal(predict(Oracle(), x, resolution=16, threshold=0.5, flip=True), plain)
    assert predict(LeftHalf(), x, resolution=16, threshold=0.5).any()
    assert not predict(LeftHalf(), x, resolution=16, threshold=0.5, flip=True).any()


class Overreaching(torch.nn.Module):
    """Sure of the bright disc, and unsure-but-above-1/2 on the dark pixels of a central box
    around it: the blob a segmenter trained on generated images draws over a photo's background."""

    def forward(self, x):
        disc = (x.mean(1, keepdim=True) > -0.1).float()
        box = torch.zeros_like(disc)
        side = x.shape[-1]
        box[..., side // 8: side - side // 8, side // 8: side - side // 8] = 1
        return 0.95 * disc + 0.6 * (1 - disc) * box + 0.02 * (1 - disc) * (1 - box)


def test_colour_refinement_drops_background_the_mask_is_unsure_of():
    image, mask = disc_scene(64, np.random.default_rng(4))
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1
    truth = torch.from_numpy(mask)

    def iou(pred):
        return float((pred[0, 0] & truth).sum() / (pred[0, 0] | truth).sum())

    plain = iou(predict(Overreaching(), x, resolution=32, threshold=0.5))
    refined = iou(predict(Overreaching(), x, resolution=32, threshold=0.5, colour=True))
    assert plain < 0.6 and refined > 0.9, (plain, refined)


def test_evaluate_scores_every_method_at_the_scoring_resolution(tmp_path):
    rng = np.random.default_rng(2)
    scenes = [disc_scene(64, rng) for _ in range(6)]
    write_shards(({"key": f"{i:03d}", "image": im, "mask": m} for i, (im, m) in enumerate(scenes)),
                 str(tmp_path / "eval"), progress=False)
    model = load_config("tiny").model  # a 16 px U-Net
    (tmp_path / "segmenter.pt").write_bytes(to_bytes(segmenter_artifact(UNet(model.seg_width, model.seg_depth), model)))
    results, grid = evaluate(str(tmp_path / "segmenter.pt"), str(tmp_path / "eval"), batch_size=4,
                             score_resolution=64, grabcut=True)
    assert results["score_resolution"] == 64 and results["model_resolution"] == 16 and results["num_images"] == 6
    assert results["grabcut"]["iou_strict"] > 0.8, "GrabCut separates these scenes"
    assert results["all_foreground"]["iou_strict"] == pytest.approx(np.mean([m.mean() for _, m in scenes]), abs=1e-6)
    assert grid.shape[1:] == (3 * 65 + 1, 6 * 65 + 1)
    table = format_table(results)
    assert "at 64 px" in table and "grabcut" in table and not results["flip"]
    flipped, _ = evaluate(str(tmp_path / "segmenter.pt"), str(tmp_path / "eval"), batch_size=4, flip=True)
    assert flipped["flip"] and "segmenter+flip" in format_table(flipped)
    both, _ = evaluate(str(tmp_path / "segmenter.pt"), str(tmp_path / "eval"), batch_size=4, flip=True, colour=True)
    assert both["colour_refine"] and "segmenter+flip+colour" in format_table(both) and not results["colour_refine"]
    json.dumps(results)  # what eval.json holds


def test_evaluate_job_prints_the_table_and_writes_json(tmp_path, capsys):
    import jobs.evaluate as evaluate_job

    rng = np.random.default_rng(3)
    write_shards(({"key": f"{i}", "image": im, "mask": m} for i, (im, m) in enumerate(disc_scene(32, rng)
                                                                                      for _ in range(3))),
                 str(tmp_path / "eval"), progress=False)
    model = load_config("tiny").model
    (tmp_path / "s.pt").write_bytes(to_bytes(segmenter_artifact(UNet(model.seg_width, model.seg_depth), model)))
    assert evaluate_job.main(["--segmenter", str(tmp_path / "s.pt"), "--data", str(tmp_path / "eval"),
                              "--resolution", "32", "--grabcut", "--out", str(tmp_path / "r.json")]) == 0
    assert "grabcut" in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["num_images"] == 3
    assert (tmp_path / "r_grid.png").stat().st_size > 0
    code = evaluate_job.main(["--segmenter", str(tmp_path / "missing.pt"), "--data", str(tmp_path / "eval")])
    one_line_error(code, capsys.readouterr().err)


def test_evaluate_job_replaces_a_report_only_with_overwrite(disc_set, tmp_path, capsys):
    """As jobs/generate.py and jobs/segment_images.py: an existing JSON or grid is refused in one
    line before any scoring, and kept; --overwrite replaces both."""
    import jobs.evaluate as evaluate_job

    root, _ = disc_set
    out = tmp_path / "r.json"
    args = ["--segmenter", str(root / "segmenter.pt"), "--data", str(root / "eval"), "--out", str(out)]
    out.write_text("earlier report")
    for existing in (out, tmp_path / "r_grid.png"):
        assert evaluate_job.main(args) == 2
        captured = capsys.readouterr()
        assert captured.err == f"error: {existing} already exists; use --overwrite to replace it\n"
        assert "segmenter" not in captured.out, "refused before scoring"
        if existing == out:
            out.rename(tmp_path / "r_grid.png")
    assert (tmp_path / "r_grid.png").read_text() == "earlier report" and not out.exists()
    assert evaluate_job.main([*args, "--overwrite"]) == 0
    assert json.loads(out.read_text())["num_images"] == 7 and (tmp_path / "r_grid.png").read_bytes()[:4] == b"\x89PNG"


@pytest.fixture(scope="module")
def disc_set(tmp_path_factory):
    """7 labelled disc scenes in shards of 3 (so a set splits into parts), one with an empty mask,
    and an untrained 16 px segmenter."""
    root = tmp_path_factory.mktemp("discs")
    rng = np.random.default_rng(3)
    scenes = [disc_scene(32, rng) for _ in range(7)]
    scenes[4] = (scenes[4][0], np.zeros_like(scenes[4][1]))
    write_shards(({"key": f"k{i}", "image": im, "mask": m} for i, (im, m) in enumerate(scenes)),
                 str(root / "eval"), samples_per_shard=3, progress=False)
    model = load_config("tiny").model
    torch.manual_seed(0)
    (root / "segmenter.pt").write_bytes(to_bytes(segmenter_artifact(UNet(model.seg_width, model.seg_depth), model)))
    return root, scenes


def test_results_hold_every_image_by_key_with_hand_checkable_baselines(disc_set):
    root, scenes = disc_set
    results, _ = evaluate(str(root / "segmenter.pt"), str(root / "eval"), batch_size=2, score_resolution=32)
    rows = results["per_image"]
    assert [r["key"] for r in rows] == [f"k{i}" for i in range(7)]
    for row, (_, mask) in zip(rows, scenes):
        # all-foreground: IoU is the mask's area; an empty mask scores 0 strict, 1 by the complement
        assert row["all_foreground"]["iou_strict"] == pytest.approx(mask.mean(), abs=1e-5)
        assert row["all_foreground"]["iou_paper"] == pytest.approx(1.0 if not mask.any() else mask.mean(), abs=1e-5)
    for method in ("segmenter", "all_foreground", "centred_box"):
        for metric, mean in results[method].items():
            assert mean == pytest.approx(np.mean([r[method][metric] for r in rows]), abs=1e-4), (method, metric)


@pytest.mark.ray
def test_ray_workers_score_the_same_images_the_same_way(disc_set, local_ray):
    root, _ = disc_set
    args = (str(root / "segmenter.pt"), str(root / "eval"))
    alone, grid = evaluate(*args, batch_size=2, score_resolution=32, grabcut=True)
    split, split_grid = evaluate(*args, batch_size=2, score_resolution=32, grabcut=True, workers=2)
    assert split == alone, "two Ray tasks, each a part of the shards, give the same results"
    assert torch.equal(split_grid, grid)


def evaluate_job(*args) -> int:
    import jobs.evaluate as job

    return exit_code(job.main, *args)


@pytest.mark.parametrize("case, words", [
    ("data is a file", ["is a file, not a folder"]),
    ("segmenter is a folder", ["is not a file: it is a folder"]),
    ("out under a file", ["--out", "is a file, not a folder"]),
    ("out is a folder, --overwrite", ["--out", "is not a file: it is a folder"]),
    ("resolution", ["--resolution", "2048"]),
    ("abbreviation", ["unrecognized arguments: --colour"]),
    ("usage", ["unrecognized arguments: --no-such-flag", "jobs/evaluate.py --help"]),
])
def test_evaluate_job_bad_paths_and_sizes_are_one_line_before_scoring(disc_set, tmp_path, capsys, case, words):
    """Each named in one line before any scoring (no table printed), and nothing at --out changed."""
    root, _ = disc_set
    segmenter, data, extra = root / "segmenter.pt", root / "eval", []
    (tmp_path / "file").write_text("mine")
    (tmp_path / "folder").mkdir()
    if case == "data is a file":
        data = tmp_path / "file"
    elif case == "segmenter is a folder":
        segmenter = tmp_path / "folder"
    elif case == "out under a file":
        extra = ["--out", tmp_path / "file" / "r.json"]
    elif case == "out is a folder, --overwrite":
        extra = ["--out", tmp_path / "folder", "--overwrite"]
    elif case == "resolution":
        extra = ["--resolution", "100000"]
    elif case == "abbreviation":
        extra = ["--colour"]
    else:
        extra = ["--no-such-flag"]
    code = evaluate_job("--segmenter", segmenter, "--data", data, *extra)
    captured = capsys.readouterr()
    line = one_line_error(code, captured.err, *words)
    assert case in ("resolution", "abbreviation", "usage") or str(tmp_path) in line, "names the path"
    assert "segmenter" not in captured.out, "refused before scoring"
    assert (tmp_path / "file").read_text() == "mine" and not any((tmp_path / "folder").iterdir())
