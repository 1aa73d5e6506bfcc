"""The one per-worker training loop that Ray Train runs, for either stage (comgan/stages.py).

Each worker: builds the stage's state from the config, restores the latest Ray Train checkpoint
if there is one (networks, optimisers, step, and this rank's random stream and data position),
wraps networks and optimisers with accelerate (gloo on CPU, NCCL on GPU), streams its own slice of
the shards, and runs the stage's steps. Rank 0 prints progress, writes TensorBoard, previews and
checkpoints, and exports the stage's artifact; every rank calls `ray.train.report` equally often
(it is a barrier).

A worker's lines go to sys.__stdout__: Ray Train patches print() to log *and* tee to the
redirected stdout, so the driver would show every line twice; the original stream is not patched.
"""
from __future__ import annotations

import logging
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterator

import ray.train
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, broadcast

from comgan import speed
from comgan.artifacts import from_bytes, load_generator, to_bytes
from comgan.inference import INFERENCE_BATCH
from comgan.stages import PREVIEW_COUNT, StageSpec, stage_spec
from comgan.training import Snapshot
from comgan.watchdog import WATCH_SAMPLES, counts_toward_streak, health_score, trivial_reason
from data_shards.io import read_bytes, redacted
from data_shards.order import LoaderCursor
from data_shards.problems import PROBLEM_KINDS
from data_shards.progress import format_duration, say
from data_shards.reader import TrainBatch, train_loader

from . import checkpoints, failures, faults
from .config import Config, config_from_dict
from .stats import StatsTicker
from .storage import configure_storage
from .tensorboard import RunWriter


@dataclass(frozen=True)
class StageJob:
    """What the driver hands every worker of one stage (as Ray's train_loop_config["job"])."""
    stage: str                  # stage1 / stage2 (comgan.stages.stage_spec)
    config: dict                # the resolved Config, as Config.to_dict()
    cpus_per_worker: int        # torch threads per worker: the CPUs Ray reserved for it
    stage_dir: str              # <run>/<stage>: Ray Train's checkpoints
    tensorboard: str            # <run>/tensorboard/<stage>
    artifact: str               # what the stage exports: generator.pt or segmenter.pt
    generator: str = ""         # stage 2: the generator.pt it learns from
    fault: str = ""             # COMGAN_FAULT for the fault tests; empty in normal runs
    # Stop early, without exporting, once the watchdog has found a trivial solution
    # run.watch_patience checks in a row: the driver then starts the stage over with another seed.
    stop_when_trivial: bool = False


def make_accelerator(cfg: Config) -> Accelerator:
    # broadcast_buffers=False: D is called several times before one backward; re-broadcasting
    # BatchNorm buffers in between modifies them in place and breaks autograd.
    ddp = DistributedDataParallelKwargs(broadcast_buffers=False)
    # accelerate deprecates broadcast_buffers but its replacement still syncs buffers at init; the
    # warning itself says to keep it until then, and would otherwise print once per worker.
    warnings.filterwarnings("ignore", message=".*broadcast_buffers.*is deprecated", category=FutureWarning)
    # cpu=True on CPU workers: without it accelerate >= 1.13 silently runs non-distributed.
    accelerator = Accelerator(cpu=not cfg.run.use_gpu, mixed_precision=cfg.run.mixed_precision,
                              kwargs_handlers=[ddp])
    world = ray.train.get_context().get_world_size()
    if accelerator.num_processes != world:
        raise RuntimeError(f"accelerate sees {accelerator.num_processes} processes but Ray Train started {world}")
    return accelerator


def setup_worker(job: StageJob) -> Config:
    """What every worker does first: its config, its threads, its storage options."""
    cfg = config_from_dict(job.config)
    # Ray Train logs every report and checkpoint at INFO through a logger that its own level
    # setting (RunConfig.logging_config) misses; keep warnings (ours and Ray's), drop the chatter.
    logging.getLogger().setLevel(logging.WARNING)
    torch.set_num_threads(max(1, int(job.cpus_per_worker)))  # more threads than cores thrash
    speed.set_backend_flags()
    configure_storage(cfg)
    return cfg


PREVIEW_PHOTOS_SEED = 5  # the orders of data.train the preview photos and a spec's watch photos are the first of
WATCH_PHOTOS_SEED = 6


def fixed_photos(cfg: Config, count: int, seed: int) -> torch.Tensor:
    """The first `count` training photos in the order `seed` gives, unflipped: the same photos at
    every check and in every process that asks (previews, ReDO's watchdog, export and objective)."""
    return next(iter(train_loader(cfg.data.train, count, seed=seed, num_workers=0, resolution=cfg.model.resolution,
                                  hflip=False))).images


def replicas_in_sync(accelerator: Accelerator, module: torch.nn.Module) -> bool:
    """True when every rank holds the same weights: the proof that gradients were synchronised.
    A collective: every rank calls it for the same modules in the same order."""
    with torch.no_grad():
        flat = torch.cat([p.detach().float().flatten() for p in module.parameters()])
        weights = torch.arange(flat.numel(), device=flat.device, dtype=torch.float64) % 997 + 1
        digest = torch.stack([flat.double().sum(), (flat.double() * weights).sum()])[None]
    digests = accelerator.gather(digest)
    return bool(torch.allclose(digests, digests[:1].expand_as(digests), rtol=0, atol=1e-9))


def load_frozen_generator(job: StageJob, cfg: Config, device) -> torch.nn.Module:
    generator, _ = load_generator(from_bytes(read_bytes(job.generator), job.generator), cfg.model, what=job.generator)
    generator = generator.to(device)
    speed.prepare_networks([generator], cfg.speed)
    return generator


def prepare(accelerator: Accelerator, state: Snapshot) -> dict:
    """Wrap the trained networks and the optimisers (DDP, mixed precision); the state keeps the
    plain objects, which the wrappers share, so its state_dict() never sees a wrapper."""
    names = list(state.trained()) + list(state.optimizers())
    objects = [getattr(state, name) for name in names]
    return dict(zip(names, accelerator.prepare(*objects)))


# ---------------------------------------------------------------------------------------------
# The loop


def stage_worker(loop_config: dict) -> None:
    """What Ray Train runs on every worker, for either stage. An error no restart can heal is
    recorded before it propagates, and the attempt Ray then starts ends at once (cluster/failures.py)."""
    job = loop_config["job"]
    if failures.recorded(job.stage_dir):
        return
    try:
        run = StageRun.start(job)
        run.finish(run.train())
    except failures.FOR_GOOD as e:
        failures.record(job.stage_dir, job.stage, e)
        raise


@dataclass
class StageRun:
    """One worker's run of one stage: built (and resumed) by `start`, then `train`, then `finish`."""
    job: StageJob
    spec: StageSpec
    cfg: Config
    accelerator: Accelerator
    state: Snapshot
    step_fn: Callable[[torch.Tensor], dict]
    data: Iterator[TrainBatch]
    cursor: LoaderCursor              # this rank's data position, saved with every checkpoint
    generator: torch.nn.Module | None  # stage 2: the frozen generator it learns from
    resumed_from: int
    writer: RunWriter | None = None   # rank 0 only, like the preview images
    preview: torch.Tensor | None = None
    photos: torch.Tensor | None = None  # the spec's fixed watch photos (rank 0), for watch and export
    watched: dict = field(default_factory=dict)  # the watchdog's last measures
    trivial: dict = field(default_factory=dict)  # its first finding: watch/reason, watch/trivial_at_step
    abandoned: bool = False           # stopped early on the watchdog (job.stop_when_trivial)

    @classmethod
    def start(cls, job: StageJob) -> "StageRun":
        cfg = setup_worker(job)
        spec = stage_spec(job.stage, cfg)
        accelerator = make_accelerator(cfg)
        device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
        if job.fault:
            faults.install(job.fault, job.stage, rank, job.stage_dir, cfg.run.checkpoint_every)
        generator = load_frozen_generator(job, cfg, device) if spec.needs_generator else None

        torch.manual_seed(cfg.run.seed)  # identical initial weights on every rank
        state = spec.create(cfg)
        saved = checkpoints.latest(spec.checkpoint_kind, job.stage_dir)
        if saved:
            state.load_state_dict(saved["state"])
            if rank == 0:
                say(f"[{spec.name}] resumed from step {state.step}", sys.__stdout__)
        for name in state.CARRIED:
            getattr(state, name).to(device)
        prepared = prepare(accelerator, state)

        resume = checkpoints.rank_state(saved, accelerator, "loader")
        seed = cfg.run.seed + spec.data_seed_offset
        if saved and resume is None:  # another worker count: a fresh order that does not replay the start
            seed += state.step
        loader = train_loader(cfg.data.train, spec.settings(cfg).batch_size // world, rank=rank, world_size=world,
                              num_workers=cfg.data.loader_workers, seed=seed, resolution=cfg.model.resolution,
                              hflip=cfg.data.hflip, resume=resume)
        data = iter(loader)  # before the random stream is restored: nothing may draw from it after
        checkpoints.resume_or_seed(cfg.run.seed, accelerator, state.step, saved)
        step_fn = spec.make_step(state, cfg, generator, accelerator.backward, prepared)
        if job.fault:
            step_fn = faults.after_each_step(step_fn, state)
        run = cls(job, spec, cfg, accelerator, state, step_fn, data, loader.cursor, generator,
                  resumed_from=state.step if saved else 0)
        if accelerator.is_main_process:
            run.writer = RunWriter(job.tensorboard)
            run.preview = fixed_photos(cfg, PREVIEW_COUNT, PREVIEW_PHOTOS_SEED).to(device)
            if spec.watch_photos:
                run.photos = fixed_photos(cfg, spec.watch_photos, WATCH_PHOTOS_SEED).to(device)
        return run

    def train(self) -> dict:
        """Steps until the stage's last (or the watchdog's stop), with on their cadences: a tick
        (reduced stats, progress line, TensorBoard), previews, the watchdog, and checkpoints; the
        last step does everything but the checkpoint, which `finish` makes with the export."""
        run, settings, state = self.cfg.run, self.spec.settings(self.cfg), self.state
        ticker = StatsTicker(self.accelerator)
        t_start = tick_time = time.time()
        tick_step, last = state.step, {}
        skipped = torch.zeros(len(PROBLEM_KINDS), dtype=torch.float64)  # bad samples this rank met
        done = state.step >= settings.steps
        while not done:
            batch = next(self.data)
            self.cursor.update(batch)
            skipped += torch.tensor(batch.problems, dtype=torch.float64)
            ticker.add(self.step_fn(batch.images.to(self.accelerator.device, non_blocking=True)))
            step = state.step
            done = step >= settings.steps
            if due(step, run.log_every, done):
                now = time.time()
                last = {**ticker.reduce(), **data_problems(self.accelerator, skipped)}
                last["perf/images_per_s"] = (step - tick_step) * settings.batch_size / max(now - tick_time, 1e-9)
                self.log_progress(step, last)
                tick_time, tick_step = now, step
            if self.writer and due(step, run.image_every, done):
                self.log_images(step)
            watch_now = bool(self.spec.watch and run.watch_every and due(step, run.watch_every, done))
            if watch_now and self.writer:
                self.watch(step)
            if done:
                break
            if watch_now and self.job.stop_when_trivial and self.trivial_for_too_long():
                self.abandoned = True
                break
            if step % run.checkpoint_every == 0:
                if self.writer:
                    self.writer.flush()
                self.checkpoint(self.progress(step, last))
            elif watch_now:
                # The measures reach Ray (and a Tune sweep's stopper) as soon as they are taken;
                # a report is a barrier, so every rank makes it.
                ray.train.report(self.progress(step, last))
        last["perf/seconds"] = time.time() - t_start
        return {**last, **self.watched, **self.trivial}

    def trivial_for_too_long(self) -> bool:
        """Rank 0's watchdog decides and every rank follows (a broadcast), so that no rank stops
        while the others wait for it in a collective."""
        streak = self.watched.get("watch/trivial_checks", 0) if self.writer else 0
        stop = torch.tensor([float(streak >= self.cfg.run.watch_patience)], device=self.accelerator.device)
        if self.accelerator.num_processes > 1:
            stop = broadcast(stop, from_process=0)
        return bool(stop.item())

    def progress(self, step: int, last: dict) -> dict:
        """What every report carries: the step, the training images the whole job has seen (stage 2
        continues stage 1's count, a measure that only grows, for Tune's schedulers), the last
        tick's stats and the watchdog's last measures."""
        images = self.spec.images_before(self.cfg) + step * self.spec.settings(self.cfg).batch_size
        return {"step": step, "progress/images": images, **last, **self.watched, **self.trivial}

    def finish(self, last: dict) -> None:
        """Check the replicas, export (rank 0), and report the final checkpoint with the summary."""
        acc, state = self.accelerator, self.state
        in_sync = all([replicas_in_sync(acc, module) for module in state.trained().values()])  # all collectives
        final = {**self.progress(state.step, last), "num_processes": acc.num_processes,
                 "replicas_in_sync": in_sync, "resumed_from": self.resumed_from,
                 "watch/abandoned": float(self.abandoned)}
        if acc.is_main_process and self.abandoned:
            self.writer.close()
            say(f"[{self.spec.name}] stopped at step {state.step}: the watchdog found a trivial solution "
                f"{self.cfg.run.watch_patience} checks in a row ({self.watched.get('watch/now')})",
                sys.__stdout__)
        elif acc.is_main_process:
            artifact, metrics = self.spec.export(state, self.cfg, INFERENCE_BATCH, self.photos)
            checkpoints.export_artifact(self.job.artifact, to_bytes(artifact))  # with its sha256 beside it
            final.update(metrics)  # summary.json: e.g. the mask statistics of what is handed to stage 2
            self.log_images(state.step)
            # Under export/: the training curves come from the live networks, these from the export.
            self.writer.scalars({f"export/{k}": float(v) for k, v in metrics.items()}, state.step)
            self.writer.close()
            say(f"[{self.spec.name}] done: {acc.num_processes} process(es), replicas in sync: {in_sync}, "
                f"exported {self.job.artifact}", sys.__stdout__)
        self.checkpoint(final)

    def checkpoint(self, metrics: dict) -> None:
        # The config is kept for the record (nothing reads it back), without URL credentials.
        snapshot = {"kind": self.spec.checkpoint_kind, "config": redacted(self.cfg.to_dict()),
                    "state": self.state.state_dict()}
        checkpoints.report(metrics, self.accelerator, snapshot, self.cursor.state_dict(), self.state.step)

    def watch(self, step: int) -> None:
        """The watchdog's measures to TensorBoard; the first trivial solution to the log and, with
        the last measures, to the stage's final metrics (summary.json)."""
        stats = self.spec.watch(self.state, self.cfg, WATCH_SAMPLES, INFERENCE_BATCH, self.photos)
        reason = trivial_reason(stats, final=step == self.spec.settings(self.cfg).steps)
        # How many checks in a row found a trivial solution: a sweep stops a trial (and a run starts
        # stage 1 over) on a streak, not on one check early in training; faint masks that are
        # still getting fewer fast do not count (watchdog.SETTLING).
        counts = counts_toward_streak(reason, stats, self.watched or None)
        streak = self.watched.get("watch/trivial_checks", 0) + 1 if counts else 0
        stats.update({"watch/health": health_score(stats), "watch/trivial_checks": streak, "watch/now": reason or ""})
        self.writer.scalars({k: v for k, v in stats.items() if k != "watch/now"}, step)
        self.watched = stats
        if reason and not self.trivial:
            self.trivial = {"watch/reason": reason, "watch/trivial_at_step": step}
            say(f"[{self.spec.name}] watchdog at step {step}: {reason}", sys.__stdout__)

    def log_images(self, step: int) -> None:
        for tag, grid in self.spec.previews(self.state, self.cfg, self.generator, self.preview).items():
            self.writer.image(tag, grid, step)

    def log_progress(self, step: int, stats: dict) -> None:
        if self.accelerator.is_main_process:
            settings = self.spec.settings(self.cfg)
            rate = stats["perf/images_per_s"]
            eta = (settings.steps - step) * settings.batch_size / max(rate, 1e-9)
            say(progress_line(self.spec, step, settings.steps, rate, eta, stats), sys.__stdout__)
            self.writer.scalars(stats, step)


def due(step: int, every: int, last: bool) -> bool:
    """Whether a cadence of `every` steps falls on `step`; the stage's last step is always due."""
    return last or step % every == 0


def data_problems(accelerator: Accelerator, skipped: torch.Tensor) -> dict:
    """Bad samples met so far (this run segment), summed over ranks: `data/<kind>` scalars."""
    total = accelerator.reduce(skipped.to(accelerator.device), reduction="sum").tolist()
    return {f"data/{kind}": n for kind, n in zip(PROBLEM_KINDS, total)}


def progress_line(spec: StageSpec, step: int, total: int, rate: float, eta: float, stats: dict) -> str:
    shown = "  ".join(f"{k.split('/')[-1]} {stats[k]:.3f}" for k in spec.progress_keys if k in stats)
    bad = int(sum(v for k, v in stats.items() if k.startswith("data/")))
    shown += f"  bad samples skipped {bad}" if bad else ""
    return (f"[{spec.name}] step {step}/{total} ({100 * step / max(total, 1):.0f}%)  {rate:.0f} img/s  {shown}  "
            f"ETA {format_duration(eta)}")
