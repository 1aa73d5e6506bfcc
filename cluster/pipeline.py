"""The whole job on the driver: data check, stage 1, handoff, stage 2, evaluation.

Each stage runs as a Ray Train TorchTrainer under <storage>/<run>/<stage>; a stage whose exported
artifact already exists is not run again, and a stage interrupted part-way resumes from its latest
checkpoint, so re-running the same command continues a run instead of starting over.
"""
from __future__ import annotations

import json
import math
import os
import time

import ray
import yaml
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from comgan.config import Config, ConfigError, config_from_dict
from data_shards.io import arrow_filesystem, read_bytes, url_exists, write_bytes
from data_shards.reader import read_manifest
from data_shards.writer import write_synthetic

from . import evaluate
from .storage import RunLayout, absolute_url, configure_storage
from .tensorboard import RunWriter
from .worker import stage1_worker, stage2_worker


def log(msg: str) -> None:
    print(f"[comgan] {msg}", flush=True)


def ensure_data(cfg: Config) -> None:
    """Write the built-in synthetic set where it is missing; then check both datasets exist."""
    d, m = cfg.data, cfg.model
    if d.synthetic:
        for url, count, seed in ((d.train, d.synthetic_train_size, 1000),
                                 (d.eval, d.synthetic_eval_size, 2000)):
            if not url_exists(url.rstrip("/") + "/manifest.json"):
                log(f"writing {count} synthetic {m.resolution}px images to {url}")
                write_synthetic(url, count, m.resolution, d.synthetic_styles, seed, samples_per_shard=d.samples_per_shard)
    train = read_manifest(d.train)
    log(f"training shards: {d.train} ({train['num_samples']} images in {len(train['shards'])} shards)")
    if d.eval:
        held_out = read_manifest(d.eval)
        if not held_out.get("has_masks"):
            raise ConfigError(f"data.eval={d.eval} has no ground-truth masks; give a set with masks or data.eval=''")


def check_run_config(cfg: Config, layout: RunLayout) -> None:
    """A run folder belongs to one config: refuse to mix artifacts of different settings."""
    if not url_exists(layout.config):
        write_bytes(layout.config, cfg.to_yaml().encode())
        return
    old = config_from_dict(yaml.safe_load(read_bytes(layout.config)))
    for section in ("model", "stage1", "stage2", "data"):
        a, b = getattr(old, section).__dict__, getattr(cfg, section).__dict__
        for key in a:
            if a[key] != b[key] and key not in ("loader_workers",):
                raise ConfigError(
                    f"run {layout.root} was started with {section}.{key}={a[key]!r}, now {b[key]!r}: "
                    f"use a new --name, or the same settings to resume it")


def init_ray() -> None:
    if ray.is_initialized():
        return
    # A new local cluster keeps its dashboard: Ray Train's placement-group cleaner polls the
    # state API it serves (without it: a warning every few seconds). It listens on 127.0.0.1.
    ray.init(address=os.environ.get("RAY_ADDRESS") or None, logging_level="WARNING", log_to_driver=True)


def worker_resources(cfg: Config) -> tuple[int, dict]:
    if cfg.run.cpus_per_worker:
        cpus = cfg.run.cpus_per_worker
    else:
        total = int(ray.cluster_resources().get("CPU", 1))
        cpus = max(1, math.floor(total / cfg.run.workers))
        if cfg.run.use_gpu:
            cpus = min(cpus, 8)
    return cpus, {"CPU": cpus, **({"GPU": 1} if cfg.run.use_gpu else {})}


def run_stage(stage: str, worker_fn, cfg: Config, layout: RunLayout, extra: dict) -> dict:
    cpus, resources = worker_resources(cfg)
    # Ray Train persists checkpoints through pyarrow; hand it the same fsspec filesystem (and
    # options) that everything else uses, so one set of settings reaches every byte of the run.
    filesystem, root = arrow_filesystem(layout.root)
    loop_config = {"config": cfg.to_dict(), "cpus_per_worker": cpus,
                   "tensorboard": layout.tensorboard(stage), **extra}
    trainer = TorchTrainer(
        worker_fn,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=cfg.run.workers, use_gpu=cfg.run.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(name=stage, storage_path=root, storage_filesystem=filesystem,
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             failure_config=FailureConfig(max_failures=2)),
    )
    log(f"{stage}: {cfg.run.workers} worker(s) x {cpus} CPU{' + 1 GPU' if cfg.run.use_gpu else ''}")
    result = trainer.fit()
    return dict(result.metrics or {})


def run_pipeline(cfg: Config) -> dict:
    started = time.time()
    configure_storage(cfg)
    # Workers may run in another folder or on another node: local paths must be absolute.
    cfg.data.train = absolute_url(cfg.data.train)
    cfg.data.eval = absolute_url(cfg.data.eval) if cfg.data.eval else ""
    layout = RunLayout(absolute_url(cfg.run.storage), cfg.run_name)
    log(f"run {cfg.run_name}: {layout.root}")
    ensure_data(cfg)
    check_run_config(cfg, layout)
    init_ray()
    summary = {"run": layout.root}

    if url_exists(layout.generator):
        log(f"stage1: {layout.generator} exists, not retraining")
    else:
        m = run_stage("stage1", stage1_worker, cfg, layout, {"generator": layout.generator})
        summary["stage1"] = m
        log(f"stage1: {m.get('step')} steps in {m.get('perf/seconds', 0):.0f}s, "
            f"{m.get('perf/images_per_s', 0):.0f} img/s, mask mean {m.get('mask/mean', float('nan')):.2f}, "
            f"empty masks {100 * m.get('mask/empty_fraction', float('nan')):.1f} %")

    if url_exists(layout.segmenter):
        log(f"stage2: {layout.segmenter} exists, not retraining")
    else:
        m = run_stage("stage2", stage2_worker, cfg, layout,
                      {"generator": layout.generator, "segmenter": layout.segmenter})
        summary["stage2"] = m
        log(f"stage2: {m.get('step')} steps in {m.get('perf/seconds', 0):.0f}s")

    if cfg.data.eval:
        results, grid = evaluate.evaluate(layout.segmenter, cfg.data.eval, cfg.model.resolution)
        if any(results["data_problems"].values()):
            log(f"evaluation skipped or repaired bad samples: {results['data_problems']}")
        results["wall_seconds"] = time.time() - started
        evaluate.save_report(results, grid, layout.eval_json, layout.eval_grid)
        writer = RunWriter(layout.tensorboard("eval"))
        writer.image("eval/heldout_rows_image_truth_prediction", grid, 0)
        writer.scalars({f"eval/{k}": v for k, v in results["segmenter"].items()}, 0)
        writer.scalars({f"data/{k}": v for k, v in results["data_problems"].items()}, 0)
        writer.close()
        print(evaluate.format_table(results), flush=True)
        log(f"wrote {layout.eval_json} and {layout.eval_grid}")
        summary["eval"] = results
    summary["wall_seconds"] = time.time() - started
    write_bytes(layout.summary, (json.dumps(summary, indent=2, default=str) + "\n").encode())
    log(f"finished in {time.time() - started:.0f}s; TensorBoard: tensorboard --logdir {layout.path('tensorboard')}")
    return summary
