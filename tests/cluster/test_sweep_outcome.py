"""jobs/tune.py keeps nothing it does not own and reports an empty sweep as a failure: a --name
whose folder holds a training run (or anything but a sweep) is refused before anything is
written (a sweep there deleted the run's TensorBoard folder), and a sweep in which no trial
produced a result exits 1 with one line. No Ray here: the checks are plain functions."""
from __future__ import annotations

from pathlib import Path

import pytest

from cluster.config import ConfigError, load_config
from cluster.search_space import parse_space
from cluster.sweep import Sweep, check_sweep_folder, no_result
from jobs.tune import main as tune
from tests.helpers import exit_code, one_line_error


def sweep_at(storage: Path, name: str = "exp") -> Sweep:
    base = load_config("tiny")
    return Sweep(name=name, storage=str(storage), base=base, axes=parse_space(["beta=0,1"], base))


def make_run(folder: Path) -> Path:
    """What a training run leaves at <storage>/<name>/ (storage.RunLayout)."""
    events = folder / "tensorboard" / "stage1" / "events.out.tfevents.1.host"
    events.parent.mkdir(parents=True)
    events.write_bytes(b"event")
    (folder / "config.yaml").write_text("run: {name: exp}\n")
    (folder / "summary.json").write_text("{}\n")
    return events


@pytest.fixture
def no_ray(monkeypatch):
    """Were the check missing, the sweep would get this far: stop it before data or Ray."""
    import cluster.pipeline

    def stop(*args, **kwargs):
        raise AssertionError("the sweep went on beside a run")

    import cluster.faults

    monkeypatch.setattr(cluster.faults, "from_environment", stop)
    for name in ("ensure_data", "place_workers"):
        monkeypatch.setattr(cluster.pipeline, name, stop)


def test_a_name_a_run_holds_is_refused(tmp_path):
    make_run(tmp_path / "exp")
    with pytest.raises(ConfigError) as e:
        check_sweep_folder(sweep_at(tmp_path))
    assert str(e.value) == (f"--name exp: {tmp_path / 'exp'} is a training run (config.yaml, summary.json, "
                            "tensorboard), not a sweep; a sweep there would delete its tensorboard/ and write over "
                            "its files: give the sweep another --name (or --storage)")


@pytest.mark.parametrize("dry_run", [False, True])
def test_jobs_tune_beside_a_run_is_one_line_and_the_run_keeps_its_tensorboard(tmp_path, no_ray, capsys, dry_run):
    events = make_run(tmp_path / "exp")
    rc = exit_code(tune, "--config", "tiny", "--storage", tmp_path, "--name", "exp", "beta=0,1",
                   *(["--dry-run"] if dry_run else []))
    line = one_line_error(rc, capsys.readouterr().err, "is a training run")
    assert line.startswith("error: --name exp: ")
    assert events.read_bytes() == b"event"
    assert sorted(p.name for p in (tmp_path / "exp").iterdir()) == ["config.yaml", "summary.json", "tensorboard"]


def test_other_files_are_refused_too(tmp_path):
    (tmp_path / "exp" / "data").mkdir(parents=True)
    (tmp_path / "exp" / "data" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"holds 1 file\(s\) that are not a sweep's, e.g. data/notes.txt"):
        check_sweep_folder(sweep_at(tmp_path))


@pytest.mark.parametrize("content", [None, [], ["sweep.json"], ["tuner.pkl", "tensorboard/x"],
                                     ["sweep.json", "runs/t1/config.yaml"], [".DS_Store"]])
def test_a_new_an_empty_or_a_sweep_folder_is_fine(tmp_path, content):
    if content is not None:
        (tmp_path / "exp").mkdir()
    for rel in content or []:
        (tmp_path / "exp" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "exp" / rel).write_text("x")
    check_sweep_folder(sweep_at(tmp_path))


def row(trial: str, stop: str, objective: float | None = None) -> dict:
    return {"trial": trial, "stop": stop, "objective": objective}


def test_a_sweep_without_a_result_is_named_with_how_its_trials_ended(tmp_path):
    sweep = sweep_at(tmp_path)
    errored = [row("t2", "error: RuntimeError: CUDA out of memory"), row("t1", "error: ValueError: boom"),
               row("t3", "watchdog at step 40: mask collapsed (full)")]
    assert no_result(sweep, errored) == ("no trial produced a result: 2 failed, 1 stopped by the watchdog "
                                         "(trial t1: ValueError: boom); every trial's stop reason: "
                                         f"{tmp_path / 'exp' / 'results.csv'}")
    assert no_result(sweep, [row("t1", "ASHA at 320 images")]).startswith(
        "no trial produced a result: 1 stopped by ASHA; every trial's stop reason: ")
    assert no_result(sweep, []).startswith("no trial produced a result: the sweep")
    assert no_result(sweep, [*errored, row("t4", "finished", 0.61)]) is None
    assert no_result(sweep, [row("t4", "finished", 0.0)]) is None  # an objective of 0 is a result


def test_jobs_tune_exits_1_when_every_trial_failed(tmp_path, monkeypatch, capsys):
    import cluster.tune

    rows = {"failed": [row("t1", "error: ValueError: boom"), row("t2", "error: ValueError: boom")],
            "one finished": [row("t1", "error: ValueError: boom"), row("t2", "finished", 0.5)]}
    for case, want in (("failed", 1), ("one finished", 0)):
        monkeypatch.setattr(cluster.tune, "run_sweep", lambda sweep, resume=False: rows[case])
        rc = exit_code(tune, "--config", "tiny", "--storage", tmp_path, "--name", "sw", "beta=0,1")
        err = capsys.readouterr().err
        assert rc == want, (case, err)
        if want:
            assert err.strip().splitlines() == [
                "error: no trial produced a result: 2 failed (trial t1: ValueError: boom); every trial's stop "
                f"reason: {tmp_path / 'sw' / 'results.csv'}"]
        else:
            assert err == ""
