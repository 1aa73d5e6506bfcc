"""The whole job on the driver: data check, stage 1, handoff, stage 2, evaluation.

Each stage runs as a Ray Train TorchTrainer under <storage>/<run>/<stage>; a stage whose exported
artifact already exists is not run again, and a stage interrupted part-way resumes from its latest
checkpoint, so re-running the same command continues a run instead of starting over. Within one
run, a failed worker group is restarted from the latest checkpoint up to run.max_failures times,
unless its error cannot heal (bad data, a damaged artifact): that stops the stage at once
(cluster/failures.py).
With stage2.generator set (jobs/segment.py) stage 1 is skipped and stage 2 learns from that
artifact, after the driver has checked that it fits the config.
"""
from __future__ import annotations

import copy
import json
import math
import os
import shlex
import time
from dataclasses import asdict

import ray
import yaml
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from comgan.artifacts import from_bytes, load_generator
from comgan.config import trained_stages
from comgan.inference import INFERENCE_BATCH
from comgan.watchdog import health_score, segmenter_reason
from data_shards.config import SYNTHETIC_HOMES
from data_shards.index import holds_shards, read_manifest
from data_shards.io import (arrow_filesystem, holds_anything, join_url, move_tree, read_bytes, redacted,
                            remove_tree, url_exists, write_bytes)
from data_shards.progress import tell
from data_shards.reader import check_usable
from data_shards.writer import write_synthetic

from . import checkpoints, evaluate, failures, faults, lease, placement
from .config import Config, ConfigError, config_from_dict
from .storage import RunLayout, absolute_url, configure_storage, read_artifact
from .tensorboard import RunWriter
from .worker import StageJob, stage_worker


COLLAPSE_SEED_STRIDE = 1000  # attempt k of stage 1 runs with run.seed + k * this: far from the next seeds a user tries
ATTEMPT_FILE = "attempt.json"


class StageFailed(RuntimeError):
    """A stage ran out of restarts on failures that may heal; its latest checkpoint is kept for the
    next attempt. (Those that cannot heal stop it at once: failures.StageStopped.)"""


def ensure_data(cfg: Config) -> None:
    """Write the built-in synthetic set where it is missing, in its own folders only: a mistyped
    data path must stop the job, not fill the user's storage and train on synthetic images.
    Then check both datasets exist."""
    data, model = cfg.data, cfg.model
    for key, url, count, seed in (("data.train", data.train, data.synthetic_train_size, 1000),
                                  ("data.eval", data.eval, data.synthetic_eval_size, 2000)):
        # data.eval='' means no evaluation; a user's plain tars (no manifest.json) are never written over
        if not data.synthetic or not url or holds_shards(url):
            continue
        if is_synthetic_home(url):
            tell(f"writing {count} synthetic {model.resolution}px images to {url}")
            write_synthetic(url, count, model.resolution, data.synthetic_styles, seed,
                            samples_per_shard=data.samples_per_shard)
        elif not holds_anything(url):  # what is there (images, a cut-off write) read_manifest explains
            command = (f"python jobs/make_shards.py synthetic {shlex.quote(url)} --count {count} "
                       f"--resolution {model.resolution} --styles {data.synthetic_styles} --seed {seed}")
            raise ConfigError(f"{key}={url}: nothing is there (data.synthetic writes the built-in synthetic set "
                              f"only under {' and '.join(h + '/' for h in SYNTHETIC_HOMES)}; to train on it "
                              f"elsewhere, write it first: {command})")
    train = read_manifest(data.train)
    check_usable(data.train, resolution=model.resolution)  # a set no reader can use fails here, not in every worker
    tell(f"training shards: {data.train} ({train['num_samples']} images in {len(train['shards'])} shards)")
    if data.eval:
        held_out = read_manifest(data.eval)
        if not held_out.get("has_masks"):
            raise ConfigError(f"data.eval={data.eval} has no ground-truth masks; give a set with masks or data.eval=''")
        check_usable(data.eval, resolution=model.resolution, masks=True)


def is_synthetic_home(url: str) -> bool:
    """Whether `url` is one of SYNTHETIC_HOMES or lies under one (relative to this directory)."""
    path = absolute_url(url)
    homes = [absolute_url(home) for home in SYNTHETIC_HOMES]
    return "://" not in path and any(path == home or path.startswith(home + os.sep) for home in homes)


def check_run_config(cfg: Config, layout: RunLayout) -> None:
    """A run folder belongs to one config: refuse to mix artifacts of different settings."""
    if not url_exists(layout.config):
        write_bytes(layout.config, cfg.to_yaml().encode())
        return
    old = config_from_dict(yaml.safe_load(read_bytes(layout.config)))  # in today's keys, whenever written
    for section in ("model", "stage1", "stage2", "data"):
        # config.yaml holds URLs redacted (Config.to_yaml): compared as saved, a URL whose
        # credentials are redacted (or a presigned one signed anew) still resumes its run.
        a, b = (leaf_values(redacted(asdict(getattr(c, section)))) for c in (old, cfg))
        for key in a:
            if a[key] != b[key] and key not in ("loader_workers",):
                raise ConfigError(
                    f"run {layout.root} was started with {section}.{key}={a[key]!r}, now {b[key]!r}: "
                    f"use a new --name, or the same settings to resume it")


def leaf_values(section: dict, prefix: str = "") -> dict:
    """A config section's values by dotted key below it (stage2's self_train.weight, ...)."""
    out = {}
    for key, value in section.items():
        if isinstance(value, dict):
            out.update(leaf_values(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_generator(url: str, cfg: Config) -> None:
    """Refuse a handoff artifact that is missing, not a generator, or built for another model,
    before any worker starts (the message names the key and both values)."""
    load_generator(from_bytes(read_artifact(url, "generator"), what=url), cfg.model, what=url)


def first_line(error: BaseException) -> str:
    """The first non-empty line of an error from Ray (whose messages carry whole tracebacks)."""
    return next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)


def restarts_allowed(cfg: Config) -> str:
    n = cfg.run.max_failures
    return "unlimited restarts" if n < 0 else f"{n} restart{'s' if n != 1 else ''}"


def run_stage(stage: str, cfg: Config, layout: RunLayout, artifact: str, generator: str = "",
              callbacks: tuple = (), stop_when_trivial: bool = False) -> dict:
    """One stage on its own TorchTrainer; `callbacks` are Ray Train callbacks (a Tune trial passes
    the one that forwards every report to Tune)."""
    job = StageJob(stage=stage, config=cfg.to_dict(), cpus_per_worker=cfg.run.cpus_per_worker,
                   stage_dir=layout.stage_dir(stage), tensorboard=layout.tensorboard(stage), artifact=artifact,
                   generator=generator, fault=os.environ.get(faults.ENV, ""), stop_when_trivial=stop_when_trivial)
    cpus = job.cpus_per_worker
    # Ray Train persists checkpoints through pyarrow; hand it the same fsspec filesystem (and
    # options) that everything else uses, so one set of settings reaches every byte of the run.
    filesystem, root = arrow_filesystem(layout.root)
    trainer = TorchTrainer(
        stage_worker,
        train_loop_config={"job": job},
        scaling_config=ScalingConfig(num_workers=cfg.run.workers, use_gpu=cfg.run.use_gpu,
                                     resources_per_worker=placement.resources_per_worker(cfg)),
        # The stage's name under the run is fixed, so a re-run finds and resumes its checkpoints.
        run_config=RunConfig(name=stage, storage_path=root, storage_filesystem=filesystem,
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.run.keep_checkpoints),
                             failure_config=FailureConfig(max_failures=cfg.run.max_failures),
                             callbacks=list(callbacks),
                             # Ray Train's INFO lines (every report, every checkpoint) would bury
                             # the progress lines; failures and restarts are warnings and still show.
                             logging_config=ray.LoggingConfig(log_level="WARNING")),
    )
    precision = "" if cfg.run.mixed_precision == "no" else f", {cfg.run.mixed_precision} mixed precision"
    tell(f"{stage}: {cfg.run.workers} worker(s) x {cpus} CPU{' + 1 GPU' if cfg.run.use_gpu else ''}"
        f"{precision}")
    failures.clear(layout.stage_dir(stage))  # a record of an earlier run: its cause may be fixed
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as e:
        failures.raise_if_recorded(layout.stage_dir(stage), stage)
        raise StageFailed(
            f"{stage} failed after {restarts_allowed(cfg)}: {first_line(e)[:300]} (worker logs above). This may "
            f"heal (a lost worker or node, a network error): its checkpoints are kept in "
            f"{layout.stage_dir(stage)}; run the same command again to resume"
        ) from None
    failures.raise_if_recorded(layout.stage_dir(stage), stage)  # the restarted attempt found the record and ended
    return dict(result.metrics or {})


def run_pipeline(cfg: Config, stage1_only: bool = False, callbacks: tuple = ()) -> dict:
    """Run (or resume) the whole job; `stage1_only` stops after exporting the generator;
    `callbacks` go to both stages' trainers."""
    started = time.time()
    if stage1_only and cfg.model.variant == "redo":
        raise ConfigError("--stage1-only has nothing to do with model.variant=redo: ReDO has no stage 1 "
                          "(its one stage exports stage2/segmenter.pt)")
    layout = prepare_run(cfg)
    # One run, one writer: the lease is taken before this driver writes anything into the run
    # folder, renewed while it runs and released however it ends (cluster/lease.py).
    with lease.acquire(layout.root) as run_lease:  # its warnings: lease.warn, "[comgan] warning: ..." (progress.tell)
        check_run_config(cfg, layout)
        place_workers(cfg)
        summary = {"run": layout.root}
        generator = train_generator(cfg, layout, summary, callbacks)
        run_lease.check()
        if not stage1_only:
            train_segmenter(cfg, layout, generator, summary, callbacks)
            run_lease.check()
            if cfg.data.eval:
                results = evaluate_run(cfg, layout, started)
                summary["eval"] = {k: v for k, v in results.items() if k != "per_image"}  # eval.json has them
        summary["wall_seconds"] = time.time() - started
        run_lease.check()
        write_bytes(layout.summary, (json.dumps(redacted(summary), indent=2, default=str) + "\n").encode())
    tell(f"finished in {time.time() - started:.0f}s; TensorBoard: tensorboard --logdir "
        f"{layout.path('tensorboard')}")
    return summary


def prepare_run(cfg: Config) -> RunLayout:
    """The checks of a user's inputs that write nothing into the run folder; run_pipeline then
    takes the run's lease, checks the run folder's config and places the workers, all before any
    worker starts. (ensure_data may write the built-in synthetic set: into its own shared
    folders, not the run's, which no run lease could guard.)"""
    resolve_urls(cfg)
    layout = RunLayout(absolute_url(cfg.run.storage), cfg.run_name)
    tell(f"run {cfg.run_name}: {layout.root}")
    faults.from_environment()  # a mistyped COMGAN_FAULT fails here, before any worker starts
    if cfg.stage2.generator and cfg.model.variant == "redo":
        raise ConfigError("stage2.generator has no use with model.variant=redo: ReDO learns from the photos "
                          "alone (leave stage2.generator empty)")
    if cfg.stage2.generator:
        check_generator(cfg.stage2.generator, cfg)
    ensure_data(cfg)
    return layout


def resolve_urls(cfg: Config) -> None:
    """Storage options for this process, and absolute input URLs: workers (and Tune trials) may
    run in another folder or on another node."""
    configure_storage(cfg)
    cfg.data.train = absolute_url(cfg.data.train)
    cfg.data.eval = absolute_url(cfg.data.eval) if cfg.data.eval else ""
    if cfg.stage2.generator:
        cfg.stage2.generator = absolute_url(cfg.stage2.generator)


def place_workers(cfg: Config) -> None:
    """Connect to (or start) Ray, resolve run.cpus_per_worker to what each worker gets, and refuse
    a request this cluster can never place."""
    fixed_cluster = placement.init_ray()
    nodes = placement.alive_nodes()
    cfg.run.cpus_per_worker = placement.cpus_per_worker(cfg, nodes)
    waiting = placement.check_placement(cfg, cfg.run.cpus_per_worker, nodes, fixed_cluster)
    if waiting:
        tell(waiting)


def train_generator(cfg: Config, layout: RunLayout, summary: dict, callbacks: tuple = ()) -> str:
    """Stage 1, unless its artifact exists or is given; returns the generator's URL ("" for ReDO,
    which has no generator)."""
    if "stage1" not in trained_stages(cfg):
        tell("stage1: none for ReDO (model.variant=redo): its one stage trains the segmenter on the photos")
        return ""
    if cfg.stage2.generator:
        tell(f"stage1: skipped, stage 2 learns from {cfg.stage2.generator}")
        summary["generator"] = cfg.stage2.generator
        return cfg.stage2.generator
    collapsed = collapsed_attempts(layout)
    if collapsed:
        summary["stage1_collapsed"] = collapsed
    if checkpoints.artifact_done(layout.generator, "comgan.generator",
                                 warn=lambda message: tell(f"stage1: warning: {message}")):
        tell(f"stage1: {layout.generator} exists, not retraining")
        return layout.generator
    while True:
        attempt = len(collapsed)
        may_restart = attempt < cfg.run.collapse_restarts
        attempt_cfg = with_seed(cfg, cfg.run.seed + COLLAPSE_SEED_STRIDE * attempt)
        metrics = {**run_stage("stage1", attempt_cfg, layout, artifact=layout.generator, callbacks=callbacks,
                               stop_when_trivial=may_restart), "seed": attempt_cfg.run.seed}
        reason = metrics.get("watch/now") or ""  # the last check's finding: at the end, or where it stopped
        if not (may_restart and reason):
            break
        collapsed.append(set_attempt_aside(layout, attempt + 1, attempt_record(metrics)))
        summary["stage1_collapsed"] = collapsed
        tell(f"stage1: trivial solution at step {metrics.get('step')} ({reason}); attempt set aside in "
            f"{layout.collapsed(attempt + 1)}, starting again with run.seed={cfg.run.seed + COLLAPSE_SEED_STRIDE * (attempt + 1)} "
            f"(restart {attempt + 1} of {cfg.run.collapse_restarts})")
    if reason:
        metrics = keep_the_healthiest_attempt(layout, metrics, collapsed)
        tell(f"stage1: the watchdog still finds a trivial solution ({metrics.get('watch/now')}) and no "
            f"restart is left (run.collapse_restarts={cfg.run.collapse_restarts}): stage 2 learns from it anyway")
    summary["stage1"] = metrics
    tell(f"stage1: {metrics.get('step')} steps in {metrics.get('perf/seconds', 0):.0f}s, "
        f"{metrics.get('perf/images_per_s', 0):.0f} img/s, mask mean {metrics.get('mask/mean', float('nan')):.2f}, "
        f"empty masks {100 * metrics.get('mask/empty_fraction', float('nan')):.1f} %")
    return layout.generator


def attempt_record(metrics: dict) -> dict:
    """What is kept of a stage-1 attempt set aside: its seed, where and why it was found trivial,
    its health by the watchdog's measures (ungated, so trivial attempts still rank) and, when it
    ran to the end, its final metrics (its generator.pt is then kept beside them)."""
    return {"seed": metrics["seed"], "step": metrics.get("step"), "reason": metrics.get("watch/now"),
            "first_trivial_at_step": metrics.get("watch/trivial_at_step"), "seconds": metrics.get("perf/seconds"),
            "health": raw_health(metrics), "metrics": None if metrics.get("watch/abandoned") else metrics}


def raw_health(metrics: dict) -> float:
    try:
        value = health_score(metrics, gated=False)
    except KeyError:  # no watchdog measures (run.watch_every=0)
        return -1.0
    return value if math.isfinite(value) else -1.0


def keep_the_healthiest_attempt(layout: RunLayout, metrics: dict, collapsed: list[dict]) -> dict:
    """When every attempt ended trivial, hand stage 2 the healthiest finished one: a restart must
    not leave a run worse off than its first attempt. Returns that attempt's final metrics."""
    finished = [a for a in collapsed if a.get("metrics")]
    best = max(finished, key=lambda a: a["health"], default=None)
    last = attempt_record(metrics)
    if best is None or best["health"] <= last["health"]:
        return metrics
    collapsed.append(set_attempt_aside(layout, len(collapsed) + 1, last))
    checkpoints.export_artifact(layout.generator,
                                read_bytes(join_url(layout.collapsed(best["attempt"]), "stage1", "generator.pt")))
    tell(f"stage1: attempt {best['attempt']} (run.seed={best['seed']}) was the healthiest "
        f"({best['health']:.3f} against {last['health']:.3f} of the last): its generator.pt is handed on")
    return {**best["metrics"], "attempt": best["attempt"]}


def with_seed(cfg: Config, seed: int) -> Config:
    if seed == cfg.run.seed:
        return cfg
    cfg = copy.deepcopy(cfg)
    cfg.run.seed = seed
    return cfg


def collapsed_attempts(layout: RunLayout) -> list[dict]:
    """The stage-1 attempts set aside so far (a resumed run counts them to pick its seed)."""
    found, attempt = [], 1
    while url_exists(join_url(layout.collapsed(attempt), ATTEMPT_FILE)):
        found.append(json.loads(read_bytes(join_url(layout.collapsed(attempt), ATTEMPT_FILE))))
        attempt += 1
    return found


def set_attempt_aside(layout: RunLayout, attempt: int, record: dict) -> dict:
    """Move a trivial stage-1 attempt (checkpoints, any generator.pt, TensorBoard) out of the way
    of the next one; its record is written last, so an interrupted move is simply redone."""
    target = layout.collapsed(attempt)
    for leftover in (target, layout.tensorboard(f"stage1_collapsed{attempt}")):  # of an interrupted move
        remove_tree(leftover)
    move_tree(layout.stage_dir("stage1"), join_url(target, "stage1"))
    move_tree(layout.tensorboard("stage1"), layout.tensorboard(f"stage1_collapsed{attempt}"))
    record = {"attempt": attempt, **record}
    write_bytes(join_url(target, ATTEMPT_FILE), (json.dumps(redacted(record), indent=2, default=str) + "\n").encode())
    return record


def train_segmenter(cfg: Config, layout: RunLayout, generator: str, summary: dict, callbacks: tuple = ()) -> None:
    if checkpoints.artifact_done(layout.segmenter, "comgan.segmenter",
                                 warn=lambda message: tell(f"stage2: warning: {message}")):
        tell(f"stage2: {layout.segmenter} exists, not retraining")
        return
    metrics = run_stage("stage2", cfg, layout, artifact=layout.segmenter, generator=generator, callbacks=callbacks)
    summary["stage2"] = metrics
    tell(f"stage2: {metrics.get('step')} steps in {metrics.get('perf/seconds', 0):.0f}s")
    warning = segmenter_warning(metrics, cfg) or redo_warning(metrics, cfg)
    if warning:
        metrics["watch/segmenter"] = warning
        tell(f"stage2: warning: {warning}")


def segmenter_warning(metrics: dict, cfg: Config) -> str | None:
    """What to tell the user when S's masks on the real images (the last tick's mean) have drifted
    from its masks on the generated ones; None when they have not."""
    if "seg/pred_real_mean" not in metrics or "seg/pred_fake_mean" not in metrics:
        return None
    reason = segmenter_reason(float(metrics["seg/pred_real_mean"]), float(metrics["seg/pred_fake_mean"]))
    if reason and cfg.stage2.self_train.weight > 0:
        # Seen on the horses at stage2.self_train.weight=2 and with a stage-1 prior that left the
        # teacher sure mostly of the background: it taught background until S marked nothing.
        guard = ("" if cfg.stage2.self_train.area_guard else
                 "stage2.self_train.area_guard=0.5 (photos whose teacher mask shrank teach nothing), ")
        reason += (f" (self-training on the teacher's own masks can do this: try {guard}a lower "
                   f"stage2.self_train.weight than {cfg.stage2.self_train.weight:g}, or "
                   f"stage2.self_train.weight=0 to see the segmenter without it)")
    return reason


def redo_warning(metrics: dict, cfg: Config) -> str | None:
    """ReDO's known failure, a region that takes the whole photo (or none of it), found by the
    watchdog at any check: it is said, and the run goes on (its authors restart early collapses
    and stop long runs early; here the user decides)."""
    if cfg.model.variant != "redo" or not metrics.get("watch/reason"):
        return None
    found = f"the watchdog found at step {metrics.get('watch/trivial_at_step')}: {metrics['watch/reason']}"
    now = metrics.get("watch/now") or "nothing"
    if now != metrics["watch/reason"]:
        found += f"; at the end: {now}"
    return (f"ReDO's masks: {found}. ReDO's authors start collapsed runs over with another seed (run.seed) "
            "and stop long runs early (stage2.steps)")


def evaluate_run(cfg: Config, layout: RunLayout, started: float) -> dict:
    results, grid = evaluate.evaluate(layout.segmenter, cfg.data.eval, batch_size=INFERENCE_BATCH,
                                      score_resolution=cfg.data.eval_resolution or None, grabcut=cfg.data.eval_grabcut)
    if any(results["data_problems"].values()):
        tell(f"evaluation skipped or repaired bad samples: {results['data_problems']}")
    results["wall_seconds"] = time.time() - started
    evaluate.save_report(results, grid, layout.eval_json, layout.eval_grid)
    writer = RunWriter(layout.tensorboard("eval"))
    writer.image("eval/heldout_rows_image_truth_prediction", grid, 0)
    writer.scalars({f"eval/{k}": v for k, v in results["segmenter"].items()}, 0)
    writer.scalars({f"data/{k}": v for k, v in results["data_problems"].items()}, 0)
    writer.close()
    print(evaluate.format_table(results), flush=True)
    tell(f"wrote {layout.eval_json} and {layout.eval_grid}")
    return results
