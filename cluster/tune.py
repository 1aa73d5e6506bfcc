"""A sweep (cluster/sweep.py) on Ray Tune: every trial is a whole DS-ComGAN run: stage 1, handoff,
stage 2 and evaluation, each stage on its own Ray Train workers (Train V2: the trial is a function
trainable that builds the stages' TorchTrainers through cluster/pipeline.py).

How a trial reaches Tune: every Train report of its stages (each watchdog check and checkpoint of
stage 1, each checkpoint of stage 2) is forwarded by Ray's TuneReportCallback, carrying
`progress/images` (training images the trial has seen, a count that only grows, also across a
resume) and the watchdog's measures (`watch/health`, `watch/trivial_checks`, ...). The trainable
then reports the trial's `objective` once, at the end (cluster/sweep.py lists the objectives).

Trials are stopped early by the watchdog (a trial whose stage-1 checks find a trivial solution
`patience` times in a row) and, with the ASHA scheduler, by comparing `watch/health` at equal
`progress/images`. Each trial's Ray Train workers hold their own placement group (created by the
Train controller); the trial actor itself reserves nothing, so `max_concurrent_trials` is what
keeps trials from waiting on each other: it is set to the number of trials whose workers fit the
cluster at once.
"""
from __future__ import annotations

import json
import os
import time

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch
from ray.tune.stopper import Stopper

from comgan.artifacts import from_bytes, load_generator, load_segmenter
from comgan.config import ConfigError, trained_stages
from comgan.inference import INFERENCE_BATCH
from comgan.stages import stage_spec
from comgan.watchdog import WATCH_SAMPLES, health_score, measure, measure_segmenter
from data_shards.io import arrow_filesystem, read_bytes, write_bytes
from data_shards.progress import tell

from . import faults, pipeline, placement
from .config import Config
from .fidelity import fidelity
from .search_space import Axis
from .storage import RunLayout, absolute_url
from .sweep import (PROGRESS, SETTINGS, Sweep, cell, check_sweep, check_sweep_folder, planned_images,
                    planned_trials, stop_reason, sweep_settings, trial_config, trial_row, trials_at_once,
                    write_results)
from .worker import WATCH_PHOTOS_SEED, fixed_photos

TRIAL_DRIVER = {"CPU": 0, "memory": 256 * 2 ** 20}


# ---------------------------------------------------------------------------------------------
# One trial


def run_trial(params: dict, sweep: dict) -> None:
    """The function trainable: the whole pipeline of one trial, then its objective."""
    trial_id = tune.get_context().get_trial_id()
    cfg = trial_config(sweep["base"], params, trial_id, sweep["runs"])
    summary = pipeline.run_pipeline(cfg, callbacks=(TuneReportCallback(),))
    layout = RunLayout(cfg.run.storage, cfg.run.name)
    tune.report({"objective": objective_value(sweep, cfg, layout, summary), PROGRESS: planned_images(cfg)})


def objective_value(sweep: dict, cfg: Config, layout: RunLayout, summary: dict) -> float:
    kind = sweep["objective"]
    if kind == "iou":
        return float(summary["eval"]["segmenter"]["iou_strict"])
    if kind == "fid":
        return float(fidelity(layout.generator, cfg.data.train, sweep["inception"], num_generated=sweep["fid_samples"],
                              num_real=sweep["fid_samples"], batch=INFERENCE_BATCH)["fid"])
    if cfg.model.variant == "redo":  # no generator: the exported mask network, measured on fixed photos
        return health_score(redo_measures(layout, cfg))
    generator, _ = load_generator(from_bytes(read_bytes(layout.generator), layout.generator), cfg.model,
                                  what=layout.generator)
    return health_score(measure(generator, cfg.model, WATCH_SAMPLES, INFERENCE_BATCH))


def redo_measures(layout: RunLayout, cfg: Config) -> dict[str, float]:
    """The watchdog's measures of a ReDO run's exported segmenter on the photos its watchdog read."""
    segmenter, _ = load_segmenter(from_bytes(read_bytes(layout.segmenter), layout.segmenter), what=layout.segmenter)
    photos = fixed_photos(cfg, stage_spec("stage2", cfg).watch_photos, WATCH_PHOTOS_SEED)
    return measure_segmenter(segmenter, photos, INFERENCE_BATCH)


# ---------------------------------------------------------------------------------------------
# Tune's parts


def domain(axis: Axis, search: str):
    """The Tune search-space entry of `axis` for `search` = "grid" or "random"."""
    if search == "grid":
        axis.check_grid()
        return tune.grid_search(list(axis.values))
    if axis.values:
        return tune.choice(list(axis.values))
    return {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}[axis.kind](
        axis.low, axis.high)


class WatchdogStopper(Stopper):
    """Stops a trial whose watchdog found a trivial solution `patience` checks in a row."""

    def __init__(self, patience: int):
        self.patience = patience

    def __call__(self, trial_id: str, result: dict) -> bool:
        return self.patience > 0 and result.get("watch/trivial_checks", 0) >= self.patience

    def stop_all(self) -> bool:
        return False


class SweepProgress(tune.Callback):
    """One line per trial event, instead of Tune's result tables (every report would print one)."""

    def __init__(self, sweep: Sweep, total: int | None):
        self.sweep, self.total = sweep, total
        self.ended = 0

    def on_trial_start(self, iteration, trials, trial, **info):
        values = ", ".join(f"{key}={cell(trial.config.get(key))}" for key in self.sweep.varied_keys)
        tell(f"trial {trial.trial_id} started: {values}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.ended += 1
        last = trial.last_result or {}
        how = stop_reason(self.sweep, last, None)
        if how == "finished":
            how = f"finished, {self.sweep.objective} {last['objective']:.4f}"
        tell(f"trial {trial.trial_id} {how} after {last.get('time_total_s', 0):.0f}s ({self.count()})")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.ended += 1
        tell(f"trial {trial.trial_id} failed: see its log above ({self.count()})")

    def count(self) -> str:
        return f"{self.ended}{f'/{self.total}' if self.total else ''} trials ended"


class FinalResultOptuna(OptunaSearch):
    """Optuna (TPE) on the trial's final objective: the stages' progress reports carry no
    objective yet, and OptunaSearch would fail on them."""

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if self.metric in result:
            super().on_trial_result(trial_id, result)


def searcher(sweep: Sweep, at_once: int):
    if sweep.search != "optuna":
        return None  # Tune's BasicVariantGenerator: grid_search and random sampling from the space
    return ConcurrencyLimiter(FinalResultOptuna(metric="objective", mode=sweep.mode, seed=sweep.base.run.seed),
                              max_concurrent=at_once)


def scheduler(sweep: Sweep):
    if sweep.scheduler == "fifo":
        return FIFOScheduler()
    cfg = sweep.base
    watched = getattr(cfg, trained_stages(cfg)[0])  # the stage the watchdog measures: the first one
    first_check = max(cfg.run.watch_every, 1) * watched.batch_size
    # Rungs on the watched stage's health from the second watchdog check on (DS-ComGAN's stage 2
    # reports no health: its rungs let every trial through). ASHA ends a trial that reaches max_t,
    # so max_t lies beyond the trial's last report, which then always comes from the evaluation.
    return ASHAScheduler(time_attr=PROGRESS, metric="watch/health", mode="max", max_t=planned_images(cfg) + 1,
                         grace_period=max(1, min(2 * first_check, watched.steps * watched.batch_size)),
                         reduction_factor=2)


def result_row(sweep: Sweep, result) -> dict:
    """A trial's row of the results, from its Tune result."""
    metrics = dict(result.metrics or {})
    trial_id = metrics.get("trial_id") or os.path.basename(result.path.rstrip("/"))
    params = {key: (result.config or {}).get(key) for key in sweep.varied_keys}
    error = None if result.error is None else pipeline.first_line(result.error)
    return trial_row(sweep, trial_id, params, metrics, error)


# ---------------------------------------------------------------------------------------------
# The sweep


def run_sweep(sweep: Sweep, resume: bool = False) -> list[dict]:
    """Run (or, with `resume`, continue) the sweep; returns the results table's rows."""
    check_sweep_folder(sweep)  # first: nothing is written, and Ray not started, beside a run
    check_sweep(sweep)
    cfg = sweep.base
    pipeline.resolve_urls(cfg)
    filesystem, root = arrow_filesystem(absolute_url(sweep.storage))
    experiment = root.rstrip("/") + "/" + sweep.name
    exists = tune.Tuner.can_restore(experiment, storage_filesystem=filesystem)
    if exists and not resume:
        raise ConfigError(f"sweep {sweep.root} exists: add --resume to continue it, or give a new --name")
    if resume and not exists:
        raise ConfigError(f"no sweep to resume at {sweep.root}")
    faults.from_environment()
    pipeline.ensure_data(cfg)  # once, here: concurrent trials must not all write the synthetic set
    # Auto CPUs give one worker per trial all of the biggest node's: on a laptop trials run one
    # after another, each as fast as a single run.
    pipeline.place_workers(cfg)
    # Only a trial's last report carries its objective; the stages' reports before it do not.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    at_once = trials_at_once(sweep, placement.alive_nodes())
    settings = {"base": cfg.to_dict(), "runs": sweep.path("runs"), "objective": sweep.objective,
                "inception": sweep.inception, "fid_samples": sweep.fid_samples}
    # The trial actor only drives: its stages' workers hold the CPUs and GPUs (in the placement group
    # each stage's Train controller creates), and the evaluation it runs itself comes after they
    # have finished. Tune refuses an all-zero request, so it reserves a little memory instead.
    trainable = tune.with_resources(tune.with_parameters(run_trial, sweep=settings), TRIAL_DRIVER)
    if not resume:
        write_bytes(sweep.path(SETTINGS), (json.dumps(sweep_settings(sweep), indent=2) + "\n").encode())
    tell(f"sweep {sweep.name}: {sweep.root} ({sweep.search} search, objective {sweep.objective} "
                 f"({sweep.mode}), {at_once} trial(s) at once, {cfg.run.workers} worker(s) x "
                 f"{cfg.run.cpus_per_worker} CPU each)")
    started = time.time()
    if resume:
        tuner = tune.Tuner.restore(experiment, trainable, resume_unfinished=True, resume_errored=True,
                                   storage_filesystem=filesystem)
    else:
        search = "grid" if sweep.search == "grid" else "random"  # Optuna samples Tune's random domains
        tuner = tune.Tuner(
            trainable,
            param_space={axis.key: domain(axis, search) for axis in sweep.axes},
            tune_config=tune.TuneConfig(num_samples=sweep.samples, search_alg=searcher(sweep, at_once),
                                        scheduler=scheduler(sweep), max_concurrent_trials=at_once,
                                        trial_dirname_creator=lambda trial: trial.trial_id),
            run_config=tune.RunConfig(name=sweep.name, storage_path=root, storage_filesystem=filesystem,
                                      stop=WatchdogStopper(sweep.patience), verbose=0,
                                      callbacks=[SweepProgress(sweep, planned_trials(sweep))],
                                      failure_config=tune.FailureConfig(max_failures=0)))
    grid = tuner.fit()
    rows = [result_row(sweep, result) for result in grid]
    write_results(sweep, rows)
    tell(f"sweep ended after {time.time() - started:.0f}s")
    return rows
