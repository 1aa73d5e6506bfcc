"""The whole pipeline through a real local Ray cluster with 2 CPU workers (tiny config)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from comgan.artifacts import from_bytes, load_generator, load_segmenter
from cluster.config import load_config
from tests.helpers import tiny_data


def tensorboard_tags(folder: Path) -> dict:
    acc = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc.Tags()


@pytest.mark.ray
def test_two_workers_end_to_end(local_ray, tiny_shards, tmp_path, capsys):
    from cluster.pipeline import run_pipeline

    cfg = load_config("tiny", [*tiny_data(tiny_shards), f"run.storage={tmp_path}", "run.name=e2e", "run.workers=2"])
    summary = run_pipeline(cfg)
    run = tmp_path / "e2e"

    for stage in ("stage1", "stage2"):
        m = summary[stage]
        assert m["num_processes"] == 2, "accelerate must see both Ray Train workers"
        assert m["replicas_in_sync"] is True, "gradients must be synchronised across ranks"
        assert m["step"] == getattr(cfg, stage).steps
    assert any(p.name.startswith("checkpoint") for p in (run / "stage1").iterdir())

    g, gcfg = load_generator(from_bytes((run / "stage1" / "generator.pt").read_bytes()), cfg.model)
    assert gcfg == cfg.model
    s, _ = load_segmenter(from_bytes((run / "stage2" / "segmenter.pt").read_bytes()), cfg.model)
    assert s(torch.zeros(1, 3, 16, 16)).shape == (1, 1, 16, 16)
    for artifact in (run / "stage1" / "generator.pt", run / "stage2" / "segmenter.pt"):  # issue 27 point 4
        recorded = (artifact.parent / f"{artifact.name}.sha256").read_text().split()[0]
        assert recorded == hashlib.sha256(artifact.read_bytes()).hexdigest(), "the worker records its sha256"

    results = json.loads((run / "eval.json").read_text())
    assert results["num_images"] == cfg.data.synthetic_eval_size
    for method in ("segmenter", "all_foreground", "centred_box"):
        assert set(results[method]) == {"iou_strict", "dice_strict", "iou_paper", "dice_paper"}
        assert 0 <= results[method]["iou_strict"] <= results[method]["iou_paper"] <= 1
    assert len(results["per_image"]) == results["num_images"], "eval.json scores every image"
    assert "per_image" not in summary["eval"], "summary.json keeps the means only"
    assert (run / "eval_grid.png").stat().st_size > 0
    assert (run / "config.yaml").exists()

    out = capsys.readouterr().out
    assert "IoU strict" in out and "paper convention" in out

    tags = tensorboard_tags(run / "tensorboard" / "stage1")
    for tag in ("loss/D_z", "loss/G_adv", "loss/D_f_info", "loss/D_b_info", "loss/binary_entropy",
                "mask/mean", "mask/near0", "mask/near1"):
        assert tag in tags["scalars"], tag
    assert "stage1/samples_rows_xbar_fg_bg_mask_xz" in tags["images"]
    for tag in ("watch/mask_empty", "watch/mask_diversity", "watch/layer_gap", "watch/fg_gap/0"):
        assert tag in tags["scalars"], tag
    assert "watch/layer_gap" in summary["stage1"], "the last watchdog measures reach summary.json"
    tags2 = tensorboard_tags(run / "tensorboard" / "stage2")
    assert {"loss/D_m", "loss/S_consistency", "loss/S_adv"} <= set(tags2["scalars"])
    assert "stage2/real_rows_x_Sx" in tags2["images"]

    # Running the same command again keeps the finished stages instead of retraining.
    again = run_pipeline(cfg)
    assert "stage1" not in again and "stage2" not in again
    assert again["eval"]["segmenter"] == results["segmenter"]


@pytest.mark.ray
def test_the_watchdog_names_a_run_forced_into_empty_masks_and_stage1_starts_again(
        local_ray, tiny_shards, tmp_path, capsys):
    """An area hinge that demands masks under 0.5 % of the image: within a few steps the
    background branch draws everything, and the run's log and summary say so. With one collapse
    restart, the first attempt stops at the second trivial check in a row and is set aside; the
    second (another seed, as trivial) runs to the end, as no restart is left."""
    from cluster.pipeline import run_pipeline

    cfg = load_config("tiny", [*tiny_data(tiny_shards, held_out=False), f"run.storage={tmp_path}", "run.name=full",
                               "stage1.steps=50", "run.watch_every=10",
                               "stage1.mask_area_max=0.005", "stage1.mask_area_weight=1000",
                               "stage1.lr=0.005", "run.collapse_restarts=1", "run.watch_patience=2", "run.seed=3",
                               "run.checkpoint_every=25", "run.image_every=25"])  # tiny's 3: 16 reports an attempt
    summary = run_pipeline(cfg, stage1_only=True)
    run = tmp_path / "full"
    out = capsys.readouterr().out
    assert "watchdog at step" in out and "starting again with run.seed=1003" in out, out

    [first] = summary["stage1_collapsed"]
    assert first["attempt"] == 1 and first["seed"] == 3 and "mask collapsed" in first["reason"]
    assert first["step"] == first["first_trivial_at_step"] + 10 < 50, "stopped at the second trivial check"
    aside = run / "stage1_collapsed" / "attempt1"
    assert json.loads((aside / "attempt.json").read_text()) == first
    assert any(p.name.startswith("checkpoint") for p in (aside / "stage1").iterdir())
    assert not (aside / "stage1" / "generator.pt").exists(), "a stopped attempt exports nothing"
    assert "watch/mask_empty" in tensorboard_tags(run / "tensorboard" / "stage1_collapsed1")["scalars"]

    last = summary["stage1"]
    assert last["seed"] == 1003 and last["step"] == 50 and last["watch/abandoned"] == 0
    assert "mask collapsed" in last["watch/reason"] and last["watch/trivial_at_step"] in (10, 20, 30, 40, 50)
    assert (run / "stage1" / "generator.pt").is_file()
    assert "no restart is left" in out

    again = run_pipeline(cfg, stage1_only=True)  # resumed: the finished attempt is kept, the record too
    assert "stage1" not in again and again["stage1_collapsed"] == [first]


def test_when_every_attempt_is_trivial_the_healthiest_finished_one_is_handed_on(tmp_path):
    from cluster.pipeline import attempt_record, keep_the_healthiest_attempt, set_attempt_aside
    from cluster.storage import RunLayout

    cfg = load_config("tiny", ["run.collapse_restarts=1"])
    layout = RunLayout(str(tmp_path), "run")
    measures = {"watch/mask_degenerate": 0.0, "watch/mask_empty": 0.0, "watch/mask_full": 0.0,
                "watch/mask_binary": 0.9, "watch/mask_diversity": 0.3, "watch/layer_gap": 0.2,
                "watch/fg_gap_min_ratio": 0.9}
    steps = cfg.stage1.steps

    def finish_attempt(seed: int, faint: float, generator: bytes) -> dict:
        (tmp_path / "run" / "stage1").mkdir(parents=True)
        (tmp_path / "run" / "stage1" / "generator.pt").write_bytes(generator)
        return {**measures, "watch/mask_soft": faint, "watch/now": "partial collapse: faint masks",
                "step": steps, "seed": seed, "watch/abandoned": 0.0}

    first = finish_attempt(0, 0.25, b"first")  # fewer faint masks: healthier
    collapsed = [set_attempt_aside(layout, 1, attempt_record(first))]
    last = finish_attempt(1000, 0.32, b"last")
    kept = keep_the_healthiest_attempt(layout, last, collapsed)
    assert kept["seed"] == 0 and kept["attempt"] == 1
    assert (tmp_path / "run" / "stage1" / "generator.pt").read_bytes() == b"first"
    assert [a["attempt"] for a in collapsed] == [1, 2]
    assert (tmp_path / "run" / "stage1_collapsed" / "attempt2" / "stage1" / "generator.pt").read_bytes() == b"last"

    # The last attempt is kept when it is the healthier one, or when no earlier attempt finished.
    (tmp_path / "run2" / "stage1").mkdir(parents=True)
    layout2 = RunLayout(str(tmp_path), "run2")
    assert keep_the_healthiest_attempt(layout2, {**first, "watch/mask_soft": 0.2}, collapsed[:1]) \
        ["watch/mask_soft"] == 0.2
    stopped = {**collapsed[0], "metrics": None}
    assert keep_the_healthiest_attempt(layout2, last, [stopped]) is last


def test_a_segmenter_whose_masks_on_the_real_images_vanished_is_reported():
    from cluster.pipeline import segmenter_warning

    shrunk = {"seg/pred_real_mean": 0.017, "seg/pred_fake_mean": 0.25}
    advice = segmenter_warning(shrunk, load_config("tiny", ["stage2.self_train.weight=2"]))
    assert "shrank towards nothing" in advice and "stage2.self_train.weight than 2" in advice
    assert "stage2.self_train.area_guard=0.5" in advice
    guarded = segmenter_warning(shrunk, load_config("tiny", ["stage2.self_train.area_guard=0.5"]))
    assert "shrank" in guarded and "area_guard" not in guarded  # already on: not advised
    plain = segmenter_warning(shrunk, load_config("tiny", ["stage2.self_train.weight=0"]))
    assert "shrank" in plain and "self-training" not in plain
    assert segmenter_warning({"seg/pred_real_mean": 0.26, "seg/pred_fake_mean": 0.25}, load_config("tiny")) is None
    assert segmenter_warning({"step": 4}, load_config("tiny")) is None  # nothing measured: nothing said


@pytest.mark.ray
def test_redo_runs_through_the_same_pipeline_and_its_segmenter_through_the_jobs(local_ray, tiny_shards, tmp_path,
                                                                                 capsys):
    """Issue 29: ReDO (--config redo) on 2 workers: no stage 1, its one stage exports the mask
    network as stage2/segmenter.pt, scored by the run and taken by jobs/evaluate.py and
    jobs/segment_images.py unchanged; the watchdog watches it."""
    import importlib.util

    from cluster.pipeline import run_pipeline
    from comgan.redo import ObjectMask
    from tests.helpers import exit_code

    tiny = ["model.resolution=16", "model.ngf=8", "model.seg_width=8", "model.dz_width=8", "model.info_width=8",
            "stage2.steps=4", "stage2.batch_size=8", "run.log_every=2", "run.image_every=2", "run.watch_every=2",
            "run.checkpoint_every=2", "run.cpus_per_worker=1", "data.loader_workers=0"]
    cfg = load_config("redo", [*tiny_data(tiny_shards), *tiny, f"run.storage={tmp_path}", "run.name=redo",
                               "run.workers=2"])
    summary = run_pipeline(cfg)
    run = tmp_path / "redo"
    assert not (run / "stage1").exists() and "stage1" not in summary
    m = summary["stage2"]
    assert m["num_processes"] == 2 and m["replicas_in_sync"] is True and m["step"] == 4
    assert "watch/mask_degenerate" in m and m["object_region"] in (0, 1)
    s, saved = load_segmenter(from_bytes((run / "stage2" / "segmenter.pt").read_bytes()), cfg.model)
    assert isinstance(s, ObjectMask) and saved.variant == "redo"
    assert s(torch.zeros(2, 3, 16, 16)).shape == (2, 1, 16, 16)
    assert json.loads((run / "eval.json").read_text())["num_images"] == load_config("tiny").data.synthetic_eval_size

    tags = tensorboard_tags(run / "tensorboard" / "stage2")
    for tag in ("loss/D", "loss/G_adv", "loss/info_z", "grad/mask_net", "mask/min_region", "watch/mask_empty"):
        assert tag in tags["scalars"], tag
    assert "redo/rows_x_region1_redrawn1_redrawn2" in tags["images"]

    def job(name):
        spec = importlib.util.spec_from_file_location(f"jobs_{name}", Path(__file__).parents[2] / "jobs" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.main

    segmenter = run / "stage2" / "segmenter.pt"
    assert exit_code(job("evaluate"), "--segmenter", segmenter, "--data", tiny_shards / "eval",
                     "--out", tmp_path / "again.json") == 0
    again = json.loads((tmp_path / "again.json").read_text())["segmenter"]
    assert again == pytest.approx(json.loads((run / "eval.json").read_text())["segmenter"])
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    from PIL import Image
    Image.new("RGB", (40, 30), (200, 30, 30)).save(pictures / "a.png")
    assert exit_code(job("segment_images"), "--photos", pictures, "--segmenter", segmenter,
                     "--out", tmp_path / "masks", "--quiet") == 0
    assert Image.open(tmp_path / "masks" / "a.png").size == (40, 30)


def test_a_watchdog_finding_on_redos_masks_is_said_with_what_to_do():
    from cluster.pipeline import redo_warning

    found = {"watch/reason": "mask collapsed (empty): ...", "watch/trivial_at_step": 250, "watch/now": ""}
    line = redo_warning(found, load_config("redo"))
    assert "at step 250: mask collapsed (empty)" in line and "at the end: nothing" in line and "run.seed" in line
    still = redo_warning({**found, "watch/now": "mask collapsed (empty): ..."}, load_config("redo"))
    assert "at the end" not in still
    assert redo_warning({"step": 4}, load_config("redo")) is None
    assert redo_warning(found, load_config("tiny")) is None  # DS-ComGAN's stage 2 has its own warning
