"""Issue 27 point 4: writes are durable, a stage is finished when its artifact loads and matches its
recorded sha256 (not when a file exists), and a damaged latest checkpoint falls back to the one before.
No Ray cluster: the functions that decide are called directly."""
from __future__ import annotations

import logging
import os

import pytest
import torch

import cluster.pipeline as pipeline
from cluster import checkpoints
from cluster.storage import RunLayout
from comgan.artifacts import generator_artifact, to_bytes
from comgan.networks import Generator
from data_shards.io import write_bytes


# ---------------------------------------------------------------------------------------------
# write_bytes

@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_write_bytes_leaves_no_partial_file_when_the_write_fails(tmp_path, monkeypatch, failing):
    """A write that fails part-way (the disk fills at the flush, the rename fails) raises, leaves
    the old file as it was and no partial file beside it."""
    target = tmp_path / "out" / "report.json"
    write_bytes(str(target), b"old and whole")

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, failing, broken)
    with pytest.raises(OSError):
        write_bytes(str(target), b"new" * 100_000)
    monkeypatch.undo()
    assert target.read_bytes() == b"old and whole"
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.json"], "a partial file was left behind"


def test_write_bytes_is_fsynced_and_keeps_a_plain_files_mode(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    target = tmp_path / "a.bin"
    write_bytes(str(target), b"x" * 1000)
    assert target.read_bytes() == b"x" * 1000
    assert len(synced) >= 2, "the file and its folder are fsync'ed"
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    assert (target.stat().st_mode & 0o777) == (plain.stat().st_mode & 0o777)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "plain"]


# ---------------------------------------------------------------------------------------------
# stage artifacts

@pytest.fixture
def generator_bytes(cfg):
    torch.manual_seed(0)
    return to_bytes(generator_artifact(Generator(cfg.model), cfg.model))


@pytest.fixture
def stage1_runs(monkeypatch):
    """pipeline.run_stage replaced by a recorder: which stages the driver decided to (re)run."""
    calls = []

    def run_stage(stage, cfg, layout, artifact, **kwargs):
        calls.append(stage)
        return {"step": cfg.stage1.steps}

    monkeypatch.setattr(pipeline, "run_stage", run_stage)
    return calls


def test_a_truncated_generator_does_not_block_the_run(tmp_path, cfg, generator_bytes, stage1_runs, capsys):
    layout = RunLayout(str(tmp_path), "run")
    checkpoints.export_artifact(layout.generator, generator_bytes)
    path = tmp_path / "run" / "stage1" / "generator.pt"
    path.write_bytes(generator_bytes[: len(generator_bytes) // 2])  # what a crash mid-copy leaves

    pipeline.train_generator(cfg, layout, {})
    assert stage1_runs == ["stage1"], "stage 1 runs again (from its latest checkpoint)"
    out = capsys.readouterr().out
    assert "warning" in out and "set aside" in out and "not retraining" not in out
    aside = [p for p in path.parent.iterdir() if p.name.startswith("generator.pt.bad-") and not p.name.endswith(".sha256")]
    assert len(aside) == 1 and aside[0].read_bytes() == generator_bytes[: len(generator_bytes) // 2], "kept, not deleted"
    assert not path.exists()


def test_an_empty_generator_without_a_checksum_does_not_block_the_run(tmp_path, cfg, stage1_runs):
    layout = RunLayout(str(tmp_path), "run")
    write_bytes(layout.generator, b"")
    pipeline.train_generator(cfg, layout, {})
    assert stage1_runs == ["stage1"]


def test_a_sound_generator_is_not_retrained_with_or_without_a_checksum(tmp_path, cfg, generator_bytes, stage1_runs):
    layout = RunLayout(str(tmp_path), "run")
    checkpoints.export_artifact(layout.generator, generator_bytes)
    assert pipeline.train_generator(cfg, layout, {}) == layout.generator
    os.remove(layout.generator + checkpoints.CHECKSUM_SUFFIX)  # written by an older version: loads, accepted
    assert pipeline.train_generator(cfg, layout, {}) == layout.generator
    assert stage1_runs == []


def test_an_artifact_that_loads_but_does_not_match_its_checksum_is_set_aside(tmp_path, cfg, generator_bytes):
    url = str(tmp_path / "generator.pt")
    checkpoints.export_artifact(url, generator_bytes)
    other = to_bytes({**torch.load(url, weights_only=True), "note": "another file"})
    write_bytes(url, other)
    warnings = []
    assert not checkpoints.artifact_done(url, "comgan.generator", warn=warnings.append)
    assert len(warnings) == 1 and "sha256" in warnings[0]
    assert not os.path.exists(url) and not os.path.exists(url + ".sha256")
    # a segmenter's name on a generator: not the artifact the stage exports
    checkpoints.export_artifact(url, generator_bytes)
    assert not checkpoints.artifact_done(url, "comgan.segmenter", warn=warnings.append)


# ---------------------------------------------------------------------------------------------
# training checkpoints

def _checkpoint(folder, state: dict | None, torn: bool = False):
    folder.mkdir(parents=True)
    data = to_bytes(state) if state is not None else b""
    (folder / checkpoints.CHECKPOINT_FILE).write_bytes(data[: len(data) // 2] if torn else data)
    return folder


def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, monkeypatch, caplog):
    from ray.train import Checkpoint

    kind = "comgan.stage1_checkpoint"
    stage_dir = tmp_path / "stage1"
    _checkpoint(stage_dir / "checkpoint_2025-01-01_10-00-00.000001", {"kind": kind, "step": 100})
    _checkpoint(stage_dir / "checkpoint_2025-01-01_10-05-00.000001", {"kind": kind, "step": 200})
    newest = _checkpoint(stage_dir / "checkpoint_2025-01-01_10-10-00.000001", {"kind": kind, "step": 300}, torn=True)
    monkeypatch.setattr(checkpoints.ray.train, "get_checkpoint", lambda: Checkpoint.from_directory(str(newest)))

    with caplog.at_level(logging.WARNING, logger="comgan.checkpoints"):
        state = checkpoints.latest(kind, str(stage_dir))
    assert state["step"] == 200, "the previous kept checkpoint, not the oldest"
    assert len(caplog.records) == 1 and "checkpoint_2025-01-01_10-05-00.000001" in caplog.text
    assert "cannot be read" in caplog.text

    # nothing readable at all: the stage starts over, with a warning, instead of failing forever
    caplog.clear()
    (stage_dir / "checkpoint_2025-01-01_10-00-00.000001" / "state.pt").write_bytes(b"")
    (stage_dir / "checkpoint_2025-01-01_10-05-00.000001" / "state.pt").write_bytes(b"junk")
    with caplog.at_level(logging.WARNING, logger="comgan.checkpoints"):
        assert checkpoints.latest(kind, str(stage_dir)) is None
    assert "starts over from step 0" in caplog.text


def test_another_stages_checkpoint_is_an_error_no_restart_retries(tmp_path, monkeypatch):
    from ray.train import Checkpoint

    from cluster.failures import FOR_GOOD

    wrong = _checkpoint(tmp_path / "stage1" / "checkpoint_2025-01-01_10-00-00.000001",
                        {"kind": "comgan.stage2_checkpoint", "step": 5})
    monkeypatch.setattr(checkpoints.ray.train, "get_checkpoint", lambda: Checkpoint.from_directory(str(wrong)))
    with pytest.raises(FOR_GOOD, match="holds a 'comgan.stage2_checkpoint' where this stage resumes from"):
        checkpoints.latest("comgan.stage1_checkpoint", str(tmp_path / "stage1"))
