"""Failures on a real local Ray cluster (2 CPU workers, tiny config), injected with COMGAN_FAULT.

Stage 1 runs 9 steps with a checkpoint every 3. Each scenario loses the worker after the step-3
checkpoint and before a good step-6 one, so every run resumes from the same step-3 checkpoint:
with RNG states restored, their generators must come out bit for bit identical, which is also
the check that a fixed seed and worker count reproduce a run.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from cluster import faults
from comgan.artifacts import from_bytes
from comgan.config import load_config

pytestmark = pytest.mark.ray

STEPS, EVERY, KEEP = 9, 3, 2


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fault_runs")


def tiny_config(tiny_shards, storage: Path, name: str, *extra: str):
    return load_config("tiny", [f"data.train={tiny_shards / 'train'}", "data.eval=''", "data.synthetic=false",
                                f"run.storage={storage}", f"run.name={name}", "run.workers=2",
                                f"stage1.steps={STEPS}", f"run.checkpoint_every={EVERY}",
                                f"run.keep_checkpoints={KEEP}", *extra])


def inject(monkeypatch, marker: Path, **spec) -> None:
    monkeypatch.setenv(faults.ENV, " ".join(f"{k}={v}" for k, v in {**spec, "marker": marker}.items()))


def checkpoint_steps(stage_dir: Path) -> list[int]:
    """Load every checkpoint folder of a stage: each must be whole and hold all ranks' RNG."""
    steps = []
    for folder in sorted(p for p in stage_dir.glob("checkpoint_*") if p.is_dir()):
        state = from_bytes((folder / "state.pt").read_bytes(), str(folder))
        assert state["kind"] == "comgan.stage1_checkpoint"
        assert len(state["rng"]) == 2, "one RNG state per rank"
        assert {"G", "D_z", "D_f", "D_b", "G_ema", "opt_D", "opt_G", "config"} <= set(state)
        steps.append(state["step"])
    return sorted(steps)


def test_killed_worker_is_restarted_from_the_latest_checkpoint(local_ray, tiny_shards, runs, monkeypatch):
    from cluster.pipeline import run_pipeline

    marker = runs / "killed-rank1-step5"
    inject(monkeypatch, marker, stage="stage1", rank=1, step=5, at="step")
    summary = run_pipeline(tiny_config(tiny_shards, runs, "worker-killed"), stage1_only=True)

    assert marker.exists(), "the fault must have fired"
    assert summary["stage1"]["resumed_from"] == 3
    assert summary["stage1"]["step"] == STEPS and summary["stage1"]["replicas_in_sync"] is True
    assert checkpoint_steps(runs / "worker-killed" / "stage1") == [6, 9], "intact, and pruned to the newest 2"


def test_killed_while_writing_a_checkpoint_resumes_from_the_previous_one(local_ray, tiny_shards, runs,
                                                                         monkeypatch):
    from cluster.pipeline import run_pipeline

    marker = runs / "killed-writing-step6"
    inject(monkeypatch, marker, stage="stage1", rank=0, step=6, at="checkpoint")
    summary = run_pipeline(tiny_config(tiny_shards, runs, "killed-in-checkpoint"), stage1_only=True)

    assert marker.exists()
    assert summary["stage1"]["resumed_from"] == 3
    assert summary["stage1"]["step"] == STEPS
    assert checkpoint_steps(runs / "killed-in-checkpoint" / "stage1") == [6, 9]


def test_rerunning_a_failed_run_resumes_and_ignores_a_torn_checkpoint(local_ray, tiny_shards, runs,
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


def test_resumed_runs_are_bit_identical(runs):
    """All three runs resumed from an identical step-3 checkpoint with the same RNG states."""
    weights = [from_bytes((runs / name / "stage1" / "generator.pt").read_bytes())["state_dict"]
               for name in ("worker-killed", "killed-in-checkpoint", "resubmitted")]
    for other in weights[1:]:
        assert weights[0].keys() == other.keys()
        for key in weights[0]:
            assert torch.equal(weights[0][key], other[key]), key
