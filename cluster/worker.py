"""The per-worker training loops that Ray Train runs: accelerate-wrapped, one per stage.

Each worker: builds the networks from the config, restores the latest Ray Train checkpoint if
there is one, wraps modules and optimisers with accelerate (gloo on CPU, NCCL on GPU), streams
its own slice of the shards, and runs the comgan phase steps. Rank 0 prints progress, writes
TensorBoard and checkpoints; every rank calls `ray.train.report` equally often (it is a barrier).
"""
from __future__ import annotations

import copy
import logging
import sys
import time
import warnings

import ray.train
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs

from comgan.artifacts import from_bytes, generator_artifact, load_generator, segmenter_artifact, to_bytes
from comgan.config import Config, config_from_dict
from comgan.export import prepare_for_export
from comgan.metrics import mask_statistics
from comgan.networks import sample_codes
from comgan.training import Stage1State, Stage1Step, Stage2State, Stage2Step
from comgan.visualize import image_grid
from data_shards.io import read_bytes, write_bytes
from data_shards.progress import format_duration
from data_shards.reader import PROBLEM_KINDS, train_loader

from . import checkpoints, faults
from .stats import StatsTicker
from .storage import configure_storage
from .tensorboard import RunWriter


def say(message: str) -> None:
    """Print from a worker once: Ray Train patches print() to log *and* tee to the redirected
    stdout, so the driver would show every line twice; the original stream is not patched."""
    print(message, file=sys.__stdout__, flush=True)


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


def setup_worker(loop_config: dict) -> Config:
    """What every worker does first: its config, its threads, its storage options."""
    cfg = config_from_dict(loop_config["config"])
    # Ray Train logs every report and checkpoint at INFO through a logger that its own level
    # setting (RunConfig.logging_config) misses; keep warnings (ours and Ray's), drop the chatter.
    logging.getLogger().setLevel(logging.WARNING)
    torch.set_num_threads(max(1, int(loop_config["cpus_per_worker"])))  # more threads than cores thrash
    configure_storage(cfg)
    return cfg


def resume_or_seed(cfg: Config, accelerator: Accelerator, step: int, saved: dict | None) -> None:
    """This process's state outside the networks: a resumed rank gets back its fp16 loss scale and
    continues its saved random stream; a fresh one (or a resume onto a different number of
    workers) is seeded from (seed, rank, step). Codes differ per rank, yet a fixed seed and
    worker count reproduce the run."""
    if saved and checkpoints.restore_process_state(saved, accelerator):
        return
    torch.manual_seed(hash((cfg.run.seed, accelerator.process_index, step)) % (2 ** 31))


def fault_injector(loop_config: dict, cfg: Config, stage: str, rank: int):
    """The crash points of the fault tests (COMGAN_FAULT); a no-op in normal runs."""
    every = cfg.run.checkpoint_every

    def settle(step: int) -> None:  # the last checkpoint strictly before the killed step is committed
        checkpoints.wait_until_registered(loop_config["stage_dir"], (step - 1) // every * every)

    return faults.injector(loop_config.get("fault", ""), stage, rank, settle)


def replicas_in_sync(accelerator: Accelerator, module: torch.nn.Module) -> bool:
    """True when every rank holds the same weights: the proof that gradients were synchronised."""
    with torch.no_grad():
        flat = torch.cat([p.detach().float().flatten() for p in module.parameters()])
        weights = torch.arange(flat.numel(), device=flat.device, dtype=torch.float64) % 997 + 1
        digest = torch.stack([flat.double().sum(), (flat.double() * weights).sum()])[None]
    digests = accelerator.gather(digest)
    return bool(torch.allclose(digests, digests[:1].expand_as(digests), rtol=0, atol=1e-9))


def train_loop(stage: str, cfg: Config, accelerator: Accelerator, step_fn, start_step: int, total_steps: int,
               loader, writer: RunWriter | None, checkpoint_state, images, crash_point) -> dict:
    """The loop both stages share: steps, ticks (reduced stats, progress, TensorBoard), images,
    checkpoints. `checkpoint_state()` builds the dict to save; `images(step)` logs grids;
    `crash_point(where, step)` is where the fault tests may kill this worker."""
    run = cfg.run
    ticker = StatsTicker(accelerator)
    global_batch = getattr(cfg, stage).batch_size
    t_start, step = time.time(), start_step
    tick_time, tick_step = t_start, step
    last = {}
    data = iter(loader)
    skipped = torch.zeros(len(PROBLEM_KINDS), dtype=torch.float64)  # bad samples this rank met
    while step < total_steps:
        batch = next(data)
        skipped += torch.tensor(batch.problems, dtype=torch.float64)
        ticker.add(step_fn(batch.images.to(accelerator.device, non_blocking=True)))
        step += 1
        crash_point("step", step)
        if step % run.log_every == 0 or step == total_steps:
            now = time.time()
            last = ticker.reduce()
            last.update(data_problems(accelerator, skipped))
            rate = (step - tick_step) * global_batch / max(now - tick_time, 1e-9)
            last["perf/images_per_s"] = rate
            if accelerator.is_main_process:
                eta = (total_steps - step) * global_batch / max(rate, 1e-9)
                say(progress_line(stage, step, total_steps, rate, eta, last))
                if writer:
                    writer.scalars(last, step)
            tick_time, tick_step = now, step
        if writer and (step % run.image_every == 0 or step == total_steps):
            images(step)
        if step % run.checkpoint_every == 0 and step < total_steps:
            if writer:
                writer.flush()
            checkpoints.report({"step": step, **last}, accelerator, checkpoint_state(),
                               lambda: crash_point("checkpoint", step))
    last["perf/seconds"] = time.time() - t_start
    return last


def data_problems(accelerator: Accelerator, skipped: torch.Tensor) -> dict:
    """Bad samples met so far (this run segment), summed over ranks: `data/<kind>` scalars."""
    total = accelerator.reduce(skipped.to(accelerator.device), reduction="sum").tolist()
    return {f"data/{kind}": n for kind, n in zip(PROBLEM_KINDS, total)}


def progress_line(stage: str, step: int, total: int, rate: float, eta: float, stats: dict) -> str:
    keys = {"stage1": ("loss/D_z", "loss/G_adv", "loss/binary_entropy", "mask/mean"),
            "stage2": ("loss/D_m", "loss/S_consistency", "loss/S_adv", "seg/pred_real_mean")}[stage]
    shown = "  ".join(f"{k.split('/')[-1]} {stats[k]:.3f}" for k in keys if k in stats)
    bad = int(sum(v for k, v in stats.items() if k.startswith("data/")))
    shown += f"  bad samples skipped {bad}" if bad else ""
    return (f"[{stage}] step {step}/{total} ({100 * step / max(total, 1):.0f}%)  {rate:.0f} img/s  {shown}  "
            f"ETA {format_duration(eta)}")


# ---------------------------------------------------------------------------------------------
# Stage 1: disentanglement


def stage1_worker(loop_config: dict) -> None:
    cfg = setup_worker(loop_config)
    accelerator = make_accelerator(cfg)
    rank, world = accelerator.process_index, accelerator.num_processes
    crash_point = fault_injector(loop_config, cfg, "stage1", rank)
    torch.manual_seed(cfg.run.seed)  # identical initial weights on every rank
    state = Stage1State.create(cfg)
    saved = checkpoints.latest("comgan.stage1_checkpoint")
    if saved:
        for name in ("G", "D_z", "D_f", "D_b", "G_ema"):
            getattr(state, name).load_state_dict(saved[name])
        state.opt_D.load_state_dict(saved["opt_D"])
        state.opt_G.load_state_dict(saved["opt_G"])
        state.step = saved["step"]
        if rank == 0:
            say(f"[stage1] resumed from step {state.step}")
    state.G_ema.to(accelerator.device)
    state.G, state.D_z, state.D_f, state.D_b, state.opt_D, state.opt_G = accelerator.prepare(
        state.G, state.D_z, state.D_f, state.D_b, state.opt_D, state.opt_G)
    resume_or_seed(cfg, accelerator, state.step, saved)
    g_plain, d_plain = accelerator.unwrap_model(state.G), accelerator.unwrap_model(state.D_z)
    step_fn = Stage1Step(state, cfg, backward=accelerator.backward, d_plain=d_plain, g_ema_source=g_plain)

    loader = train_loader(cfg.data.train, cfg.stage1.batch_size // world, rank=rank, world_size=world,
                          num_workers=cfg.data.loader_workers, seed=cfg.run.seed + state.step,
                          resolution=cfg.model.resolution, hflip=cfg.data.hflip)
    writer = RunWriter(loop_config["tensorboard"]) if accelerator.is_main_process else None
    fixed = sample_codes(8, cfg.model, device=accelerator.device,
                         generator=torch.Generator(accelerator.device).manual_seed(1234))

    def images(step):
        with torch.no_grad():
            out = state.G_ema(*fixed[:3])
        writer.image("stage1/samples_rows_xbar_fg_bg_mask_xz",
                     image_grid([out.image, out.fg, out.bg, out.mask, out.global_image]), step)

    def checkpoint_state():
        return {"kind": "comgan.stage1_checkpoint", "config": cfg.to_dict(), "step": state.step,
                **{n: accelerator.unwrap_model(getattr(state, n)).state_dict() for n in ("G", "D_z", "D_f", "D_b")},
                "G_ema": state.G_ema.state_dict(), "opt_D": state.opt_D.state_dict(),
                "opt_G": state.opt_G.state_dict()}

    last = train_loop("stage1", cfg, accelerator, step_fn, state.step, cfg.stage1.steps, loader, writer,
                      checkpoint_state, images, crash_point)
    in_sync = replicas_in_sync(accelerator, g_plain)
    final = {"step": state.step, "num_processes": world, "replicas_in_sync": in_sync,
             "resumed_from": saved["step"] if saved else 0, **last}
    if accelerator.is_main_process:
        exported, done = export_generator(cfg, state, loop_config["generator"])
        health = generator_health(cfg, exported, accelerator.device)
        final.update(health)  # summary.json: the mask statistics of what is handed to stage 2
        final["swapped_fg_bg"] = done["swapped_fg_bg"]
        images(state.step)
        # Under export/: the training curves' mask/* come from G, these from the exported G_ema.
        writer.scalars({f"export/{k}": v for k, v in health.items()}, state.step)
        writer.close()
        say(f"[stage1] done: {world} process(es), replicas in sync: {in_sync}, "
            f"exported {loop_config['generator']}")
    checkpoints.report(final, accelerator, checkpoint_state(), lambda: crash_point("checkpoint", state.step))


def export_generator(cfg: Config, state: Stage1State, url: str) -> tuple:
    """Recalibrate and orient a copy of G_ema (training state stays as it was), then write the
    handoff artifact."""
    g = copy.deepcopy(state.G_ema)
    done = prepare_for_export(g, cfg)
    write_bytes(url, to_bytes(generator_artifact(g, cfg.model, {"step": state.step, "export": done})))
    return g, done


@torch.no_grad()
def generator_health(cfg: Config, g_ema, device, n: int = 512) -> dict:
    """Mask statistics of the exported G_ema: collapse or empty masks show here."""
    z, f, b, _, _ = sample_codes(n, cfg.model, device=device, generator=torch.Generator(device).manual_seed(99))
    return {k: float(v) for k, v in mask_statistics(g_ema(z, f, b).mask).items()}


# ---------------------------------------------------------------------------------------------
# Stage 2: segmentation


def stage2_worker(loop_config: dict) -> None:
    cfg = setup_worker(loop_config)
    accelerator = make_accelerator(cfg)
    rank, world = accelerator.process_index, accelerator.num_processes
    crash_point = fault_injector(loop_config, cfg, "stage2", rank)
    generator, _ = load_generator(from_bytes(read_bytes(loop_config["generator"]), loop_config["generator"]),
                                  cfg.model, what=loop_config["generator"])
    generator.to(accelerator.device)
    torch.manual_seed(cfg.run.seed)
    state = Stage2State.create(cfg)
    saved = checkpoints.latest("comgan.stage2_checkpoint")
    if saved:
        state.S.load_state_dict(saved["S"])
        state.D_m.load_state_dict(saved["D_m"])
        state.opt_S.load_state_dict(saved["opt_S"])
        state.opt_Dm.load_state_dict(saved["opt_Dm"])
        state.step = saved["step"]
        if rank == 0:
            say(f"[stage2] resumed from step {state.step}")
    state.S, state.D_m, state.opt_S, state.opt_Dm = accelerator.prepare(state.S, state.D_m, state.opt_S, state.opt_Dm)
    resume_or_seed(cfg, accelerator, state.step, saved)
    step_fn = Stage2Step(state, generator, cfg, backward=accelerator.backward,
                         dm_plain=accelerator.unwrap_model(state.D_m))
    loader = train_loader(cfg.data.train, cfg.stage2.batch_size // world, rank=rank, world_size=world,
                          num_workers=cfg.data.loader_workers, seed=cfg.run.seed + 7919 + state.step,
                          resolution=cfg.model.resolution, hflip=cfg.data.hflip)
    writer = RunWriter(loop_config["tensorboard"]) if accelerator.is_main_process else None
    preview = next(iter(train_loader(cfg.data.train, 8, seed=5, num_workers=0, resolution=cfg.model.resolution,
                                     hflip=False))).images.to(accelerator.device)

    def images(step):
        s = accelerator.unwrap_model(state.S)
        was_training = s.training
        s.eval()
        with torch.no_grad():
            fake_img, fake_mask = step_fn.generate(8, accelerator.device)
            grid_real = image_grid([preview, s(preview)])
            grid_fake = image_grid([fake_img, fake_mask, s(fake_img)])
        s.train(was_training)
        writer.image("stage2/real_rows_x_Sx", grid_real, step)
        writer.image("stage2/generated_rows_xbar_mask_Sxbar", grid_fake, step)

    def checkpoint_state():
        return {"kind": "comgan.stage2_checkpoint", "config": cfg.to_dict(), "step": state.step,
                "S": accelerator.unwrap_model(state.S).state_dict(),
                "D_m": accelerator.unwrap_model(state.D_m).state_dict(),
                "opt_S": state.opt_S.state_dict(), "opt_Dm": state.opt_Dm.state_dict()}

    last = train_loop("stage2", cfg, accelerator, step_fn, state.step, cfg.stage2.steps, loader, writer,
                      checkpoint_state, images, crash_point)
    s_plain = accelerator.unwrap_model(state.S)
    in_sync = replicas_in_sync(accelerator, s_plain)
    final = {"step": state.step, "num_processes": world, "replicas_in_sync": in_sync,
             "resumed_from": saved["step"] if saved else 0, **last}
    if accelerator.is_main_process:
        write_bytes(loop_config["segmenter"], to_bytes(segmenter_artifact(s_plain, cfg.model, {"step": state.step})))
        writer.close()
        say(f"[stage2] done: {world} process(es), replicas in sync: {in_sync}, "
            f"exported {loop_config['segmenter']}")
    checkpoints.report(final, accelerator, checkpoint_state(), lambda: crash_point("checkpoint", state.step))
