"""Ray Tune sweeps on a real local Ray cluster (tiny config): trials that are whole runs, the results
table, the best trial's artifacts, TensorBoard hparams, the watchdog stopping a trial forced into
a trivial solution while a healthy one runs on, placement groups freed after a stopped trial, a
sweep interrupted with Ctrl-C and resumed without redoing its finished trial, and one-line errors."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import ROOT, exit_code, one_line_error, tiny_data

TUNE = [sys.executable, str(ROOT / "jobs" / "tune.py")]

# Masks under 0.5 % of the image, enforced hard: within a few steps the background branch draws
# everything (the same forcing as the end-to-end watchdog test).
FORCED_EMPTY = "0.005"


def tiny_sweep(tiny_shards, storage: Path, *words: str) -> list[str]:
    return ["--config", "tiny", "--storage", str(storage), *[w for o in tiny_data(tiny_shards) for w in ("--set", o)],
            *words]


def read_table(sweep: Path) -> dict[str, dict]:
    with open(sweep / "results.csv") as fh:
        return {row["trial"]: row for row in csv.DictReader(fh)}


def placement_groups_left(ray) -> list[str]:
    from ray.util import placement_group_table

    return [pg_id for pg_id, pg in placement_group_table().items() if pg["state"] != "REMOVED"]


def wait_for_free_cpus(ray, want: float, timeout: float = 60) -> float:
    deadline = time.time() + timeout
    while time.time() < deadline:
        free = ray.available_resources().get("CPU", 0)
        if free >= want:
            return free
        time.sleep(0.5)
    return ray.available_resources().get("CPU", 0)


@pytest.mark.ray
def test_watchdog_stops_the_forced_trial_the_healthy_one_finishes_and_the_table_is_written(
        local_ray, tiny_shards, tmp_path, capsys):
    from jobs.tune import main

    # Two trials at once (1 CPU per worker on the 2-CPU cluster): a healthy one and one whose area
    # hinge demands empty masks. Watchdog checks every 10 steps; three trivial checks in a row stop a
    # trial. (The healthy one's masks sharpen through the faint-mask band at steps 20-30, as real
    # runs do early on: patience is what lets such a trial through.)
    rc = main(tiny_sweep(tiny_shards, tmp_path, "--name", "sw", "--patience", "3",
                         f"stage1.mask_area_max=0.95,{FORCED_EMPTY}", "--set", "stage1.mask_area_weight=1000",
                         "--set", "stage1.lr=0.005", "--set", "stage1.steps=60", "--set", "run.watch_every=10",
                         "--set", "run.checkpoint_every=30"))
    out = capsys.readouterr().out
    sweep = tmp_path / "sw"
    rows = read_table(sweep)
    assert rc == 0 and len(rows) == 2, out
    by_max = {float(r["stage1.mask_area_max"]): r for r in rows.values()}
    healthy, forced = by_max[0.95], by_max[float(FORCED_EMPTY)]

    assert healthy["stop"] == "finished", healthy
    assert 0.0 <= float(healthy["objective"]) <= 1.0
    assert healthy["segmenter"].endswith("stage2/segmenter.pt") and Path(healthy["segmenter"]).is_file()
    summary = json.loads((sweep / "runs" / healthy["trial"] / "summary.json").read_text())
    assert float(healthy["objective"]) == pytest.approx(summary["eval"]["segmenter"]["iou_strict"])

    assert forced["stop"].startswith("watchdog at step") and "mask collapsed (empty)" in forced["stop"], forced
    assert forced["objective"] == "" and forced["segmenter"] == ""
    assert int(forced["images"]) < 60 * 8, "stopped before the end of stage 1"
    assert int(forced["planned_images"]) == 60 * 8 + 4 * 8 == int(healthy["images"])
    assert "the watchdog stopped 1 trial(s)" in out

    # The best trial's artifacts at a stable path, and the JSON table agrees with the CSV.
    best = json.loads((sweep / "best" / "trial.json").read_text())
    assert best["trial"] == healthy["trial"]
    assert (sweep / "best" / "segmenter.pt").read_bytes() == Path(healthy["segmenter"]).read_bytes()
    assert (sweep / "best" / "generator.pt").is_file()
    document = json.loads((sweep / "results.json").read_text())
    assert {t["trial"] for t in document["trials"]} == set(rows) and document["mode"] == "max"
    assert "best: " + healthy["trial"] in out and "watchdog at step" in out

    # TensorBoard hparams: one entry per trial, holding the varied key and the objective.
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    mux = EventMultiplexer()
    mux.AddRunsFromDirectory(str(sweep / "tensorboard"))
    mux.Reload()
    for trial in rows:
        content = mux.PluginRunToTagToContent("hparams").get(trial, {})
        assert content, f"no hparams entry for {trial}: {list(mux.Runs())}"
        assert b"stage1.mask_area_max" in b"".join(content.values())

    # The stopped trial's workers gave their placement group back: nothing is left allocated.
    assert wait_for_free_cpus(local_ray, 2) == 2
    assert placement_groups_left(local_ray) == []


@pytest.mark.ray
def test_an_interrupted_sweep_resumes_without_redoing_its_finished_trial(local_ray, tiny_shards, tmp_path):
    """The sweep runs as a user runs it (jobs/tune.py in its own process, on the cluster RAY_ADDRESS
    names), one trial at a time: the short trial finishes, the long one is interrupted with Ctrl-C
    after its first stage-1 checkpoint; --resume keeps the first and resumes the second from it."""
    env = {**os.environ, "RAY_ADDRESS": local_ray.get_runtime_context().gcs_address, "PYTHONUNBUFFERED": "1"}
    words = tiny_sweep(tiny_shards, tmp_path, "--name", "rs", "--concurrent", "1", "stage1.steps=6,400",
                       "--set", "run.checkpoint_every=40", "--set", "run.watch_every=0")
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen([*TUNE, *words], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    runs = tmp_path / "rs" / "runs"
    deadline = time.time() + 240
    long_trial = None
    while time.time() < deadline and first.poll() is None:
        done = [d for d in runs.glob("*") if (d / "summary.json").exists()] if runs.exists() else []
        started = [d for d in runs.glob("*") if d not in done and any((d / "stage1").glob("checkpoint_*"))] \
            if runs.exists() else []
        if done and started:
            long_trial = started[0]
            break
        time.sleep(0.5)
    assert long_trial is not None, (tmp_path / "first.log").read_text()[-3000:]
    finished = done[0]
    finished_at = (finished / "summary.json").stat().st_mtime_ns
    first.send_signal(signal.SIGINT)
    assert first.wait(timeout=120) != 0
    log.close()
    assert not (long_trial / "summary.json").exists(), "the long trial was interrupted"

    resumed = subprocess.run([*TUNE, "--resume", "--name", "rs", "--storage", str(tmp_path)], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    rows = read_table(tmp_path / "rs")
    assert {r["stop"] for r in rows.values()} == {"finished"} and len(rows) == 2
    assert (finished / "summary.json").stat().st_mtime_ns == finished_at, "the finished trial was not run again"
    stage1 = json.loads((long_trial / "summary.json").read_text())["stage1"]
    assert stage1["step"] == 400 and stage1["resumed_from"] >= 40, "resumed from its checkpoint, not from step 0"


@pytest.mark.parametrize("words, message", [
    (["foo=1,2"], "unknown config key 'foo'"),
    (["lam=uniform:3:1", "--search", "random"], "is empty"),
    (["N=0,3"], "model.num_categories (N) must be >= 1"),
    (["beta=0,1", "beta=2"], "given twice"),
    (["lam=loguniform:0.5:8"], "cannot be searched on a grid"),
    ([], "the search space is empty"),
    (["beta=0,1", "--objective", "fid"], "needs --inception"),
    (["stage2.lr=0.0001,0.0002", "--config", "redo", "--objective", "fid"], "ReDO (model.variant=redo) has no generator"),
    (["beta=0,1", "--set", "data.eval=", "--objective", "iou"], "needs labelled shards"),
    (["--resume", "beta=0,1"], "--resume continues a sweep exactly as it was started"),
    (["--resume", "--name", "never-started"], "no sweep to resume"),
    (["beta=0,1", "--samples", "0"], "must be >= 1"),
    (["beta=0,1", "--config", ""], "--config is empty"),
])
def test_bad_sweeps_are_one_line_errors(words, message, tmp_path, capsys):
    from jobs.tune import main

    one_line_error(exit_code(main, *words, "--storage", tmp_path, "--dry-run"), capsys.readouterr().err, message)


def test_a_sweep_file_gives_the_space_and_settings(tmp_path, capsys):
    from jobs.tune import main

    path = tmp_path / "sweep.yaml"
    path.write_text("config: tiny\nset: {stage1.steps: 12}\nspace:\n  beta: [0, 0.5]\n  lam: loguniform:0.5:8\n"
                    "search: random\nsamples: 3\n")
    assert main(["--sweep", str(path), "--storage", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "random search, 3 sample(s)" in out and "stage1.beta: [0.0, 0.5]" in out
    assert "stage2.lam: loguniform:0.5:8.0" in out
    path.write_text("config: tiny\nspaces: {beta: [0]}\n")
    assert main(["--sweep", str(path), "--dry-run"]) == 2
    assert "unknown sweep key(s) spaces" in capsys.readouterr().err


def test_sweep_json_gives_back_the_sweep_as_started(tmp_path):
    """--resume reads every setting back (each one given here differs from its default)."""
    from cluster.sweep import SETTINGS, load_sweep, sweep_settings
    from jobs.tune import build_sweep, parse_args

    sweep = build_sweep(parse_args(["--config", "tiny", "--storage", str(tmp_path), "--name", "s", "beta=0,1",
                                    "lam=uniform:1:2", "--search", "random", "--samples", "3", "--objective", "fid",
                                    "--inception", "i.pt", "--fid-samples", "9", "--scheduler", "asha",
                                    "--patience", "4", "--concurrent", "2"]))
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / SETTINGS).write_text(json.dumps(sweep_settings(sweep)))
    assert load_sweep(str(tmp_path), "s") == sweep


def test_tune_domains_for_grid_and_random_search(cfg):
    from cluster.search_space import parse_space
    from cluster.tune import domain
    from comgan.config import ConfigError

    beta, lam = parse_space(["beta=0,1", "lambda=loguniform:0.5:8"], cfg)
    assert domain(beta, "grid") == {"grid_search": [0.0, 1.0]}
    choice, log = domain(beta, "random"), domain(lam, "random")
    assert {choice.sample() for _ in range(50)} == {0.0, 1.0}
    assert all(0.5 <= log.sample() <= 8 for _ in range(50))
    with pytest.raises(ConfigError, match="cannot be searched on a grid"):
        domain(lam, "grid")
    n, = parse_space(["N=randint:2:5"], cfg)
    assert {domain(n, "random").sample() for _ in range(100)} == {2, 3, 4}


def test_optuna_searches_the_space_and_learns_only_from_final_objectives():
    """TPE over the same space: it suggests typed values in range, ignores the stages' progress
    reports (they carry no objective) and takes a trial's final objective."""
    from cluster.config import load_config
    from cluster.search_space import parse_space
    from cluster.sweep import Sweep, check_sweep
    from cluster.tune import domain, searcher

    base = load_config("tiny")
    sweep = Sweep(name="s", storage="unused", base=base, search="optuna", samples=4,
                  axes=parse_space(["beta=0,0.5,1", "lam=loguniform:0.5:8", "N=3,6"], base))
    check_sweep(sweep)
    search = searcher(sweep, at_once=1)
    assert search.set_search_properties(None, None, {a.key: domain(a, "random") for a in sweep.axes})
    params = search.suggest("t1")
    assert params["stage1.beta"] in (0.0, 0.5, 1.0) and 0.5 <= params["stage2.lam"] <= 8
    assert params["model.num_categories"] in (3, 6)
    assert search.suggest("t2") is None, "one trial at a time: the next waits for the first to end"
    search.on_trial_result("t1", {"progress/images": 320, "watch/health": 0.4})
    search.on_trial_complete("t1", {"objective": 0.7, "progress/images": 640})
    assert search.suggest("t2") is not None
    study = search.searcher._ot_study
    assert [t.value for t in study.trials if t.value is not None] == [0.7]



def test_a_redo_trials_health_is_its_exported_mask_networks_on_the_photos(tiny_shards, tmp_path):
    """ReDO has no generator to measure: the health objective measures the exported mask network on
    the photos its watchdog read (also when a resumed trial found segmenter.pt already there)."""
    from cluster.config import load_config
    from cluster.storage import RunLayout
    from cluster.tune import objective_value, redo_measures
    from comgan.artifacts import segmenter_artifact, to_bytes
    from comgan.redo import ObjectMask
    from comgan.watchdog import health_score

    cfg = load_config("redo", ["model.resolution=16", "model.seg_width=8", f"data.train={tiny_shards / 'train'}"])
    layout = RunLayout(str(tmp_path), "r")
    segmenter = ObjectMask(cfg.model.seg_width)
    with torch.no_grad():  # region 0 nowhere: the object mask is empty on every photo
        last = segmenter.net.decoder[-1]
        last.weight.zero_()
        last.bias.copy_(torch.tensor([-20.0, 20.0]))
    (tmp_path / "r" / "stage2").mkdir(parents=True)
    (tmp_path / "r" / "stage2" / "segmenter.pt").write_bytes(to_bytes(segmenter_artifact(segmenter, cfg.model)))
    assert objective_value({"objective": "health"}, cfg, layout, {}) == 0
    with torch.no_grad():
        last.bias.zero_()
    (tmp_path / "r" / "stage2" / "segmenter.pt").write_bytes(to_bytes(segmenter_artifact(segmenter, cfg.model)))
    measured = redo_measures(layout, cfg)
    assert measured["watch/mask_empty"] < 1 and 0 < measured["watch/mask_mean"] < 1
    assert objective_value({"objective": "health"}, cfg, layout, {}) == health_score(measured)
