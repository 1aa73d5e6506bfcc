"""The two training stages, each described by one small spec that a generic loop runs (and ReDO's
one stage, which takes the segmenter stage's place under model.variant redo).

A spec says what a stage trains (its state: networks, optimisers, step), how one step goes,
what its image previews show and what it exports at the end. Everything here is pure PyTorch;
the Ray/accelerate worker in cluster/worker.py runs any spec the same way: restore, prepare,
step, tick, preview, checkpoint, export.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from . import watchdog
from .artifacts import generator_artifact, segmenter_artifact
from .config import ComGANConfig
from .export import export_generator
from .networks import sample_codes
from .redo import REGIONS, ReDOState, ReDOStep, export_segmenter
from .training import Snapshot, Stage1State, Stage1Step, Stage2State, Stage2Step, plain_backward
from .visualize import image_grid

PREVIEW_SEED = 1234
PREVIEW_COUNT = 8


@dataclass(frozen=True)
class StageSpec:
    name: str                   # "stage1" / "stage2": the config section and the run sub-folder
    checkpoint_kind: str        # the "kind" of its training checkpoints
    needs_generator: bool       # learns from a frozen stage-1 generator
    create: Callable[..., Snapshot]                    # (cfg) -> fresh state
    make_step: Callable[..., Callable]                 # (state, cfg, generator, backward, prepared) -> step
    previews: Callable[..., dict[str, torch.Tensor]]   # (state, cfg, generator, real) -> {tag: grid}
    export: Callable[..., tuple[dict, dict]]           # (state, cfg, chunk) -> (artifact, metrics)
    progress_keys: tuple[str, ...]                     # stats shown on the progress line
    # Added to run.seed for the order in which the stage reads the shards: each stage has its own
    # (stage 2 must not replay stage 1's batches). Any fixed number other than stage 1's will do.
    data_seed_offset: int
    # Training images seen before this stage starts (cfg) -> int: stage 2 continues stage 1's
    # count, so `progress/images` only grows across a whole job (Tune's schedulers compare on it).
    images_before: Callable[[ComGANConfig], int]
    watch: Callable[..., dict[str, float]] | None = None  # (state, cfg, samples, chunk, photos) -> watchdog measures
    # Fixed training photos the worker loads for `watch` and `export` (their `photos`; None when 0):
    # a method that segments photos directly is watched, and oriented, on photos.
    watch_photos: int = 0

    def settings(self, cfg: ComGANConfig):
        return getattr(cfg, self.name)


def _preview_codes(cfg: ComGANConfig, device):
    return sample_codes(PREVIEW_COUNT, cfg.model, device=device,
                        generator=torch.Generator(device).manual_seed(PREVIEW_SEED))[:3]


@torch.no_grad()
def _eval_mode(module: nn.Module, fn):
    was_training = module.training
    module.eval()
    try:
        return fn()
    finally:
        module.train(was_training)


# ---------------------------------------------------------------------------------------------
# Stage 1: disentanglement


def _stage1_step(state, cfg, generator=None, backward=plain_backward, prepared=None):
    return Stage1Step(state, cfg, backward=backward, prepared=prepared or {})


@torch.no_grad()
def _stage1_previews(state: Stage1State, cfg, generator, real) -> dict:
    out = state.G_ema(*_preview_codes(cfg, real.device))
    return {"stage1/samples_rows_xbar_fg_bg_mask_xz":
            image_grid([out.image, out.fg, out.bg, out.mask, out.global_image])}


def _stage1_export(state: Stage1State, cfg, chunk: int, photos=None) -> tuple[dict, dict]:
    g, done, health = export_generator(state.G_ema, cfg, chunk)
    artifact = generator_artifact(g, cfg.model, {"step": state.step, "export": done})
    return artifact, {**health, "swapped_fg_bg": done["swapped_fg_bg"]}


def _stage1_watch(state: Stage1State, cfg, samples: int, chunk: int, photos=None) -> dict[str, float]:
    return watchdog.measure(state.G_ema, cfg.model, samples, chunk)


STAGE1 = StageSpec(
    name="stage1", checkpoint_kind="comgan.stage1_checkpoint", needs_generator=False,
    create=Stage1State.create,
    make_step=_stage1_step, previews=_stage1_previews, export=_stage1_export,
    progress_keys=("loss/D_z", "loss/G_adv", "loss/binary_entropy", "mask/mean"),
    data_seed_offset=0, images_before=lambda cfg: 0,
    watch=_stage1_watch,
)


# ---------------------------------------------------------------------------------------------
# Stage 2: segmentation


def _stage2_step(state, cfg, generator=None, backward=plain_backward, prepared=None):
    return Stage2Step(state, cfg, backward=backward, prepared=prepared or {}, generator=generator)


def _stage2_previews(state: Stage2State, cfg, generator, real) -> dict:
    codes = _preview_codes(cfg, real.device)

    def grids():
        out = generator(*codes)
        return {"stage2/real_rows_x_Sx": image_grid([real, state.S(real)]),
                "stage2/generated_rows_xbar_mask_Sxbar": image_grid([out.image, out.mask, state.S(out.image)])}

    return _eval_mode(state.S, grids)


def _stage2_export(state: Stage2State, cfg, chunk: int, photos=None) -> tuple[dict, dict]:
    network = "S_teacher" if cfg.stage2.self_train.export_teacher else "S"
    return segmenter_artifact(getattr(state, network), cfg.model, {"step": state.step, "network": network}), {}


STAGE2 = StageSpec(
    name="stage2", checkpoint_kind="comgan.stage2_checkpoint", needs_generator=True,
    create=Stage2State.create,
    make_step=_stage2_step, previews=_stage2_previews, export=_stage2_export,
    progress_keys=("loss/D_m", "loss/S_consistency", "loss/S_adv", "loss/S_self_train", "seg/pred_real_mean"),
    data_seed_offset=7919, images_before=lambda cfg: cfg.stage1.steps * cfg.stage1.batch_size,
)



# ---------------------------------------------------------------------------------------------
# ReDO (model.variant redo): the segmenter stage, trained on the photos instead of a generator


REDO_WATCH_PHOTOS = 64  # fixed training photos ReDO's watchdog and export read


def _redo_step(state, cfg, generator=None, backward=plain_backward, prepared=None):
    return ReDOStep(state, cfg, backward=backward, prepared=prepared or {})


def _redo_previews(state: ReDOState, cfg, generator, real) -> dict:
    """Rows: the photos, M's first region, each region redrawn from fixed codes."""
    z = torch.randn(real.shape[0], cfg.model.z_dim, generator=torch.Generator().manual_seed(PREVIEW_SEED)).to(real)

    def grids():
        masks = state.M(real)
        rows = [real, masks[:, :1]]
        for k in range(REGIONS):
            m, region = masks[:, k:k + 1], torch.full((real.shape[0],), k, device=real.device)
            rows.append(m * state.G(m, z, region) + (1 - m) * real)
        return {"redo/rows_x_region1_redrawn1_redrawn2": image_grid(rows)}

    return _eval_mode(state.G, lambda: _eval_mode(state.M, grids))


def _redo_export(state: ReDOState, cfg, chunk: int, photos=None) -> tuple[dict, dict]:
    segmenter = export_segmenter(state.M, cfg.model, photos, chunk)
    region = int(segmenter.region)
    return segmenter_artifact(segmenter, cfg.model, {"step": state.step, "network": "M", "object_region": region}), \
        {"object_region": region}


def _redo_watch(state: ReDOState, cfg, samples: int, chunk: int, photos=None) -> dict[str, float]:
    return watchdog.measure_segmenter(export_segmenter(state.M, cfg.model, photos, chunk), photos, chunk)


REDO = StageSpec(
    name="stage2", checkpoint_kind="comgan.redo_checkpoint", needs_generator=False,
    create=ReDOState.create,
    make_step=_redo_step, previews=_redo_previews, export=_redo_export,
    progress_keys=("loss/D", "loss/G_adv", "loss/info_z", "mask/min_region"),
    data_seed_offset=7919, images_before=lambda cfg: 0,
    watch=_redo_watch, watch_photos=REDO_WATCH_PHOTOS,
)

STAGES = {spec.name: spec for spec in (STAGE1, STAGE2)}


def stage_spec(stage: str, cfg: ComGANConfig) -> StageSpec:
    """What runs as `stage` under cfg: ReDO's one stage takes the segmenter stage's place."""
    if cfg.model.variant == "redo" and stage == "stage2":
        return REDO
    return STAGES[stage]
