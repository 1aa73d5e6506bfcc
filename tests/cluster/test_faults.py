"""Failures on a real local Ray cluster (2 CPU workers, 2 loader processes each, tiny config),
injected with COMGAN_FAULT, and the resume property users ask for most: a run killed and resumed
ends with the same weights, bit for bit, as the same run never interrupted.

Stage 1 runs 9 steps with a checkpoint every 3. Each scenario loses a worker after the step-3
checkpoint and before a good step-6 one, so it resumes from step 3; it must then match the
uninterrupted run exactly. That holds only if the checkpoint restores each rank's random stream
and each loader's position (the step-3 checkpoint falls on loader role 3 % 2 = 1): reseeding
either one, as a fresh start does, changes every later step.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from cluster import faults
from cluster.config import ConfigError, load_config
from comgan.artifacts import from_bytes
from tests.helpers import tiny_data

pytestmark = pytest.mark.ray

STEPS, EVERY, KEEP = 9, 3, 2


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fault_runs")


def tiny_config(tiny_shards, storage: Path, name: str, *extra: str):
    return load_config("tiny", [*tiny_data(tiny_shards, held_out=False), f"run.storage={storage}", f"run.name={name}",
                                "run.workers=2", "data.loader_workers=2", f"stage1.steps={STEPS}",
                                f"run.checkpoint_every={EVERY}", f"run.keep_checkpoints={KEEP}", *extra])


def inject(monkeypatch, marker: Path, **spec) -> None:
    monkeypatch.setenv(faults.ENV, " ".join(f"{k}={v}" for k, v in {**spec, "marker": marker}.items()))


def checkpoint_steps(stage_dir: Path) -> list[int]:
    """Load every checkpoint folder of a stage: each must be whole and hold all ranks' state."""
    steps = []
    for folder in sorted(p for p in stage_dir.glob("checkpoint_*") if p.is_dir()):
        saved = from_bytes((folder / "state.pt").read_bytes(), str(folder))
        assert saved["kind"] == "comgan.stage1_checkpoint"
        assert len(saved["ranks"]) == 2, "one random stream and loader position per rank"
        assert all({"torch", "loader"} <= set(rank) for rank in saved["ranks"])
        assert {"G", "D_z", "D_f", "D_b", "G_ema", "opt_D", "opt_G", "step"} <= set(saved["state"])
        steps.append(saved["state"]["step"])
    return sorted(steps)


def final_weights(run: Path) -> dict:
    """The exported generator and the last checkpoint's networks and optimisers."""
    stage1 = run / "stage1"
    last = max((p for p in stage1.glob("checkpoint_*") if p.is_dir()),
               key=lambda p: from_bytes((p / "state.pt").read_bytes())["state"]["step"])
    saved = from_bytes((last / "state.pt").read_bytes())["state"]
    return {"generator": from_bytes((stage1 / "generator.pt").read_bytes())["state_dict"],
            **{name: saved[name] for name in ("G", "D_z", "D_f", "D_b", "G_ema")},
            "opt_G": saved["opt_G"]["state"]}


def assert_bit_identical(a: dict, b: dict, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
        return
    assert isinstance(a, dict) and a.keys() == b.keys(), where
    for key in a:
        assert_bit_identical(a[key], b[key], f"{where}/{key}")


@pytest.fixture(scope="module")
def uninterrupted(local_ray, tiny_shards, runs) -> dict:
    from cluster.pipeline import run_pipeline

    summary = run_pipeline(tiny_config(tiny_shards, runs, "uninterrupted"), stage1_only=True)
    assert summary["stage1"]["resumed_from"] == 0
    return final_weights(runs / "uninterrupted")


def test_killed_worker_is_restarted_and_ends_bit_identical(uninterrupted, tiny_shards, runs, monkeypatch):
    from cluster.pipeline import run_pipeline

    marker = runs / "killed-rank1-step5"
    inject(monkeypatch, marker, stage="stage1", rank=1, step=5, at="step")
    summary = run_pipeline(tiny_config(tiny_shards, runs, "worker-killed"), stage1_only=True)

    assert marker.exists(), "the fault must have fired"
    assert summary["stage1"]["resumed_from"] == 3
    assert summary["stage1"]["step"] == STEPS and summary["stage1"]["replicas_in_sync"] is True
    assert checkpoint_steps(runs / "worker-killed" / "stage1") == [6, 9], "intact, and pruned to the newest 2"
    assert_bit_identical(final_weights(runs / "worker-killed"), uninterrupted)


def test_killed_while_writing_a_checkpoint_resumes_from_the_previous_one(uninterrupted, tiny_shards, runs,
                                                                         monkeypatch):
    from cluster.pipeline import run_pipeline

    marker = runs / "killed-writing-step6"
    inject(monkeypatch, marker, stage="stage1", rank=0, step=6, at="checkpoint")
    summary = run_pipeline(tiny_config(tiny_shards, runs, "killed-in-checkpoint"), stage1_only=True)

    assert marker.exists()
    assert summary["stage1"]["resumed_from"] == 3
    assert summary["stage1"]["step"] == STEPS
    assert checkpoint_steps(runs / "killed-in-checkpoint" / "stage1") == [6, 9]
    assert_bit_identical(final_weights(runs / "killed-in-checkpoint"), uninterrupted)


def test_rerunning_a_failed_run_resumes_and_ignores_a_torn_checkpoint(uninterrupted, tiny_shards, runs,
                                                                      monkeypatch):
    from cluster.pipeline import StageFailed, run_pipeline

    cfg = tiny_config(tiny_shards, runs, "resubmitted", "run.max_failures=0")
    inject(monkeypatch, runs / "killed-no-retries", stage="stage1", rank=1, step=5, at="step")
    with pytest.raises(StageFailed, match="run the same command again to resume"):
        run_pipeline(cfg, stage1_only=True)
    stage1 = runs / "resubmitted" / "stage1"
    assert checkpoint_steps(stage1) == [3]
    assert not (stage1 / "generator.pt").exists()

    # What a crash in the middle of an upload leaves: a newer checkpoint folder, half written.
    good = next(p for p in stage1.glob("checkpoint_*") if p.is_dir())
    torn = stage1 / "checkpoint_2999-01-01_00-00-00.000000"
    shutil.copytree(good, torn)
    data = (torn / "state.pt").read_bytes()
    (torn / "state.pt").write_bytes(data[: len(data) // 2])

    monkeypatch.delenv(faults.ENV)
    summary = run_pipeline(tiny_config(tiny_shards, runs, "resubmitted", "run.max_failures=0"), stage1_only=True)
    assert summary["stage1"]["resumed_from"] == 3
    assert summary["stage1"]["step"] == STEPS
    registered = json.loads((stage1 / "checkpoint_manager_snapshot.json").read_text())
    assert torn.name not in json.dumps(registered), "a torn folder is never registered"
    torn.rename(stage1 / "torn-copy")  # not a checkpoint_* folder any more: final_weights skips it
    assert_bit_identical(final_weights(runs / "resubmitted"), uninterrupted)


def test_a_run_resumes_onto_another_worker_count(local_ray, tiny_shards, runs, monkeypatch):
    """2 workers fail after the step-3 checkpoint; the same run continues on 1 worker, with
    fresh random streams (no rank's saved stream is its own) and synchronised weights."""
    from cluster.pipeline import StageFailed, run_pipeline

    inject(monkeypatch, runs / "killed-before-shrinking", stage="stage1", rank=1, step=5, at="step")
    with pytest.raises(StageFailed):
        run_pipeline(tiny_config(tiny_shards, runs, "shrunk", "run.max_failures=0"), stage1_only=True)
    monkeypatch.delenv(faults.ENV)
    summary = run_pipeline(tiny_config(tiny_shards, runs, "shrunk", "run.workers=1"), stage1_only=True)
    assert summary["stage1"]["resumed_from"] == 3 and summary["stage1"]["num_processes"] == 1
    assert summary["stage1"]["step"] == STEPS
    assert (runs / "shrunk" / "stage1" / "generator.pt").exists()


def test_a_run_folder_refuses_a_changed_config(local_ray, tiny_shards, runs):
    from cluster.pipeline import run_pipeline

    (runs / "refuses").mkdir()
    (runs / "refuses" / "config.yaml").write_text(tiny_config(tiny_shards, runs, "refuses").to_yaml())
    with pytest.raises(ConfigError, match=r"was started with stage1.beta=1.0, now 0.5: use a new --name"):
        run_pipeline(tiny_config(tiny_shards, runs, "refuses", "stage1.beta=0.5"), stage1_only=True)
    assert not (runs / "refuses" / "stage1").exists(), "refused before any worker started"


@pytest.mark.timeout(420)  # without the classification, max_failures=-1 would retry this forever
def test_an_error_no_restart_can_heal_stops_the_stage_at_once(local_ray, tiny_shards, runs, tmp_path):
    """Shards deleted after the driver's check: every worker attempt would fail the same way. The
    stage stops on the first failure with the reader's own line, and once the shards are back the
    same command runs through."""
    from cluster.failures import RECORD, StageStopped
    from cluster.pipeline import run_pipeline

    data = tmp_path / "train"
    shutil.copytree(tiny_shards / "train", data)
    first, *rest = sorted(data.glob("*.tar"))  # the driver's check reads the first shard only
    for shard in rest:
        shard.rename(tmp_path / shard.name)
    cfg = lambda: tiny_config(tiny_shards, runs, "shards-gone", f"data.train={data}", "run.max_failures=-1")  # noqa: E731
    with pytest.raises(StageStopped, match=r"stage1 stopped: .*\.tar is listed in manifest.json but missing "
                                           r"\(DatasetError\)\. Not retried"):
        run_pipeline(cfg(), stage1_only=True)
    assert not (runs / "shards-gone" / "stage1" / RECORD).exists(), "the driver clears the record"

    for shard in rest:
        (tmp_path / shard.name).rename(shard)
    summary = run_pipeline(cfg(), stage1_only=True)
    assert summary["stage1"]["step"] == STEPS
