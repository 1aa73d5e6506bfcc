"""The model's and the two stages' settings, and the typed loading every config section shares.

Defaults here are the laptop default (32 px, CPU, minutes on 2 cores). comgan owns what decides the
mathematics (model, stage1, stage2) and how its steps compute it (speed); the run config that adds
data, storage and run settings, the presets and `load_config` live in cluster/config.py. The helpers below (`apply_mapping`,
`set_key`) fill any nested dataclass from YAML mappings and dotted `key=value` overrides with type
checks and one-line errors.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields, is_dataclass
import yaml

from .augment import parse_policy
from .errors import UserError

# Keys that no longer exist, each with what replaced it: a current key (no spaces) or a note in
# words. Files written before them (artifacts, checkpoints, a run folder's config.yaml) still load:
# `current_keys` moves a renamed key's value to its new name and drops the others. Given in a
# config file or an override, a retired key is one ConfigError that names what replaced it.
RETIRED_KEYS = {
    "model.dz_aux_logits": "no longer a setting (D_z has no auxiliary code head)",
    "model.z_scale": "no longer a setting (the authors' 4.0: comgan/networks.py Z_SCALE)",
    "model.dm_width": "no longer a setting (D_m has D_z's width, model.dz_width)",
    **{f"{stage}.adam_beta{i}": "no longer a setting (the paper's (0.5, 0.999): comgan/speed.py ADAM_BETAS)"
       for stage in ("stage1", "stage2") for i in (1, 2)},
    "stage1.mask_border_ring": "no longer a setting (1/16 of the side: comgan/training.py MASK_BORDER_RING)",
    "stage1.mask_area_min": "no longer a setting (0.05 changed nothing: comgan/losses.py MASK_AREA_MIN)",
    "stage1.ema_decay": "no longer a setting (0.999: comgan/training.py G_EMA_DECAY)",
    "stage1.bn_recalibration_batches": "no longer a setting (20: comgan/export.py BN_RECALIBRATION_BATCHES)",
    "stage2.self_train_confidence": "no longer a setting (0.8: comgan/training.py SELF_TRAIN_CONFIDENCE)",
    "stage2.self_train_ema": "no longer a setting (0.99: comgan/training.py SELF_TRAIN_EMA)",
    **{f"speed.{name}": "no longer a setting (always on in training: comgan/speed.py Formulation)"
       for name in ("channels_last", "code_as_bias", "fused_glu", "fused_optimizer")},
    "speed.cudnn_benchmark": "no longer a setting (always on for GPUs: comgan/speed.py CUDNN_BENCHMARK)",
    "speed.tf32": "no longer a setting (PyTorch's default: no TF32 in matmuls)",
    "run.watch_samples": "no longer a setting (256: comgan/watchdog.py WATCH_SAMPLES)",
    "run.inference_batch": "no longer a setting (32: comgan/inference.py INFERENCE_BATCH)",
    "data.eval_flip": "no longer a setting (score a run's segmenter with jobs/evaluate.py --flip)",
    "data.eval_colour_refine": "no longer a setting (score a run's segmenter with jobs/evaluate.py --colour-refine)",
    **{f"stage2.{old}": f"stage2.self_train.{new}" for old, new in (
        ("self_train_weight", "weight"), ("self_train_start", "start"), ("self_train_colour_bins", "colour_bins"),
        ("self_train_area_guard", "area_guard"), ("export_teacher", "export_teacher"))},
    "stage2.lr_decay": "removed, never measured (stage 2's learning rate is constant)",
    "stage2.self_train_augment": "no longer a setting (colour and translation: comgan/training.py SELF_TRAIN_AUGMENT)",
}


class ConfigError(UserError, ValueError):  # ValueError: _coerce catches it as one
    """A user mistake in a config file or override; printed as one line, never a traceback."""


VARIANTS = ("ds-comgan", "comgan", "pi1", "pi2", "redo")  # ModelConfig.variant's values


@dataclass
class ModelConfig:
    resolution: int = 32        # image side; power of two >= 16 (paper: 128)
    z_dim: int = 100            # noise size
    num_categories: int = 6     # N: size of the independent one-hot codes f and b (paper: 200)
    ngf: int = 16               # generator width: 8*ngf channels at 4x4, halved by each upBlock (paper: 64)
    subnet_width: int = 16      # width of the F, B and M subnets (paper: 128 = 2*ngf)
    dz_width: int = 32          # D_z's base width, D_m's too: the paper gives both 32
    info_width: int = 32        # D_f / D_b base width (paper: 64)
    seg_width: int = 16         # U-Net base filters, doubled at each level (paper: 64)
    seg_depth: int = 3          # U-Net down-sampling levels (paper: 4)
    # The model: ds-comgan (the paper's DS-ComGAN: M, F and B share Phi(z); D_f and D_b tie x_f to f
    # and x_b to b), or one of the paper's trivial-solution study (the `study` preset), trained
    # without D_f and D_b: comgan (shared Phi), pi1 (B on its own Phi: FineGAN-like) or pi2 (M and
    # B each on their own: PerturbGAN-like). comgan/networks.py Generator. Or redo: the ReDO
    # baseline (comgan/redo.py), which has no stage 1: its one stage trains a mask network on the
    # photos, under stage2's steps, batch size and learning rate, and exports it as the segmenter.
    variant: str = "ds-comgan"


@dataclass
class Stage1Config:
    steps: int = 800            # one step = one D_z update + one G/D_f/D_b update
    batch_size: int = 32        # global batch, split evenly across workers
    lr: float = 2e-4            # Adam learning rate of both optimisers (the paper's)
    beta: float = 1.0           # weight of the mask binary-entropy term
    # Steps over which beta rises linearly from ~0 (0 = full from the first step): the entropy term
    # can drive an early faint mask to 0 and leave its object style to the background for good.
    beta_warmup: int = 0
    # Weight of a hinge keeping each mask's area in [min, max] (not in the paper: 0): the background
    # branch can otherwise draw a whole object style under an empty mask.
    mask_area_weight: float = 20.0
    # The hinge's upper bound (its lower one is losses.MASK_AREA_MIN): by default it forbids only
    # (nearly) full masks; a lower max says "objects are the smaller part" (under 0.05: empty masks).
    mask_area_max: float = 0.95
    # Weight of a prior that one layer, either, owns the frame's outer ring (losses.mask_border_loss;
    # not in the paper: 0): photos of objects inside the frame otherwise split into top and bottom.
    mask_border_weight: float = 0.0
    # DiffAugment policy for every D_z input, real and fake alike (comgan/augment.py): a comma list
    # of color, translation, cutout; "" = off. Small photo sets need it: D_z memorises them.
    augment: str = ""
    # Weight of a frozen D_f reading f from the composite x_bar too (not in the paper: 0): an object
    # style drawn by the background branch under a faint mask hides f there, so it asks for visible masks.
    composite_info_weight: float = 0.25
    orient_mask: bool = True    # at export, swap F/B if the mask covers the border (the background)


@dataclass
class SelfTrainConfig:
    """Stage 2's self-training on the real images (not in the paper). S learns from generated pairs,
    blurrier than photos, so its masks on photos are blobs; from step `start` on it also learns the
    confident pixels of its EMA teacher's masks of the real batch, which adapts it to the photos."""
    weight: float = 1.0         # weight of the self-training term in S's loss (0 = off; paper: 0)
    start: int = 400            # first step with self-training: S must first learn from generated pairs
    # Refine the teacher's masks by each photo's colours before they become labels (comgan/refine.py),
    # with histograms of this many cells per channel (0 = off): cleaner labels where colours differ.
    colour_bins: int = 0
    # An image whose teacher mask covers under this share of the generated masks' mean area (or of their
    # background) teaches nothing that step (0 = off): keeps S's masks from shrinking step by step to nothing.
    area_guard: float = 0.0
    export_teacher: bool = False  # export S's EMA teacher (kept in every run) instead of S: steadier between checkpoints


@dataclass
class Stage2Config:
    steps: int = 800            # one step = one D_m update + one S update
    batch_size: int = 32        # global batch of generated and of real images, each
    # Adam learning rate of S and D_m (paper: 2e-4 over tens of thousands of steps): Adam moves each
    # weight by about lr per step, and a stage 2 of hundreds of steps needs the larger rate.
    lr: float = 1e-3
    lam: float = 2.0            # lambda: weight of the L1 consistency S(x_bar) ~ x_bar_m
    # The stage-1 artifact (generator.pt, any URL) stage 2 learns from; empty: this run's own
    # stage1/generator.pt, trained first. jobs/segment.py --generator sets it.
    generator: str = ""
    adv_weight: float = 1.0     # weight of S's adversarial terms against D_m (paper: 1)
    self_train: SelfTrainConfig = field(default_factory=SelfTrainConfig)


@dataclass
class SpeedConfig:
    """How steps are computed, never what (comgan/speed.py). The switches that only keep the
    mathematics are always on in training (speed.Formulation); these two cost something, so are opt-in."""
    # CPU: wide 3x3 convs (64+ channels at 32+ px: only the paper preset's) by Winograd F(4x4, 3x3), 4x
    # fewer multiplications (comgan/winograd.py); opt-in, as its native kernel needs a C++ compiler.
    winograd: bool = False
    compile: bool = False         # torch.compile every trained network: opt-in, each worker compiles for a while first


@dataclass
class ComGANConfig:
    """The model and both training stages: everything that decides what is computed, and the
    opt-in speed switches that decide only how. The run config (cluster/config.py) extends it with where
    data and runs live and how workers run."""
    model: ModelConfig = field(default_factory=ModelConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    speed: SpeedConfig = field(default_factory=SpeedConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------
# Loading, overrides, validation


def renamed_to(key: str) -> str:
    """The current key a retired dotted key became, or "" where it was removed."""
    replacement = RETIRED_KEYS.get(key, "")
    return "" if " " in replacement else replacement


def current_keys(data: dict, prefix: str = "") -> dict:
    """A saved (nested) mapping in today's keys: each retired key's value moved to its new name or
    dropped (RETIRED_KEYS); a value saved under the new name as well wins. `prefix` is the dotted
    path of `data` itself ("model." for an artifact's model section)."""
    out, moved = {}, []
    for key, value in data.items():
        full = f"{prefix}{key}"
        if full in RETIRED_KEYS:
            if renamed_to(full):
                moved.append((renamed_to(full)[len(prefix):].split("."), value))
        elif isinstance(value, dict):
            out[key] = current_keys(value, prefix=full + ".")
        else:
            out[key] = value
    for path, value in moved:
        section = out
        for part in path[:-1]:
            section = section.setdefault(part, {}) if isinstance(section, dict) else None
        if isinstance(section, dict):  # else a malformed file, which apply_mapping reports
            section.setdefault(path[-1], value)
    return out


def model_config_from_dict(data: dict) -> ModelConfig:
    """A saved model section (artifacts), checked with a config's ranges: the file may come from
    any URL, and its sizes decide what gets built."""
    cfg = ModelConfig()
    apply_mapping(cfg, current_keys(data, prefix="model."), prefix="model.")
    check_finite(cfg, prefix="model.")
    validate_model(cfg)
    return cfg


def apply_mapping(obj, data: dict, prefix: str = "") -> None:
    """Set the fields of a (nested) dataclass from a mapping, checking names and types."""
    for key, value in data.items():
        full = f"{prefix}{key}"
        target = _field(obj, key, full)
        current = getattr(obj, key)
        if is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{full} is a section; give a mapping, not {value!r}")
            apply_mapping(current, value, prefix=full + ".")
        else:
            setattr(obj, key, _coerce(value, target, full))


def set_key(cfg, dotted: str, text: str) -> None:
    """Set one dotted key from command-line text: YAML for numbers and booleans, verbatim for
    strings (YAML would turn `run.mixed_precision=no` into False)."""
    obj = cfg
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        target = _field(obj, part, ".".join(parts[: i + 1]))
        if i == len(parts) - 1:
            if is_dataclass(getattr(obj, part)):
                raise ConfigError(f"{dotted} is a section; set one of its keys, e.g. {dotted}.<key>=...")
            verbatim = _kind(target) == "str" and not text.startswith(("'", '"'))
            value = text if verbatim else (yaml.safe_load(text) if text else "")
            setattr(obj, part, _coerce(value, target, dotted))
        else:
            obj = getattr(obj, part)
            if not is_dataclass(obj):
                raise ConfigError(f"unknown config key {dotted!r}: {'.'.join(parts[: i + 1])} is not a section")


def _field(obj, name: str, full: str):
    for f in fields(obj):
        if f.name == name:
            return f
    if full in RETIRED_KEYS:
        now = renamed_to(full)
        raise ConfigError(f"config key {full!r} is now {now}" if now else
                          f"config key {full!r} was retired: {RETIRED_KEYS[full]}")
    known = ", ".join(f.name for f in fields(obj))
    raise ConfigError(f"unknown config key {full!r} (known here: {known})")


def _kind(f) -> str:
    return f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))


def _coerce(value, f, full: str):
    kind = _kind(f)
    try:
        if kind == "bool":
            if isinstance(value, bool):
                return value
            raise ValueError
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind == "str":
            if isinstance(value, bool):  # YAML 1.1 reads unquoted no/yes/off/on as booleans
                raise ConfigError(f"{full} must be a string; YAML read {value!r} as a boolean: quote it")
            return "" if value is None else str(value)
    except (TypeError, ValueError):
        pass
    else:
        return value
    words = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}
    raise ConfigError(f"{full} must be {words.get(kind, kind)}, got {value!r}")


def check_finite(obj, prefix: str = "") -> None:
    """Refuse NaN and inf in any float of a (nested) dataclass, naming the key. Done before the
    range checks, which they would pass: every comparison with NaN is false, and inf is >= 0."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        if is_dataclass(value):
            check_finite(value, prefix=f"{prefix}{f.name}.")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{prefix}{f.name} must be a finite number, got {value}")


def trained_stages(cfg: ComGANConfig) -> tuple[str, ...]:
    """The stage sections a run of `cfg` trains, in order: ReDO (model.variant redo) trains only the
    segmenter stage, from the photos."""
    return ("stage2",) if cfg.model.variant == "redo" else ("stage1", "stage2")


def validate(cfg: ComGANConfig) -> None:
    """Model and stage settings; the run config adds its own checks (cluster/config.py). The
    finiteness walk covers every section of `cfg`, those of a run config included."""
    check_finite(cfg)
    validate_model(cfg.model)
    validate_stages(cfg)


MAX_RESOLUTION = 2048  # the largest image side a model (and an artifact) may have


def validate_model(m: ModelConfig) -> None:
    """The model section's ranges, shared by configs and the artifacts' saved model sections."""
    if m.variant not in VARIANTS:
        raise ConfigError(f"model.variant must be one of {', '.join(VARIANTS)}, got {m.variant!r}")
    if m.resolution < 16 or m.resolution > MAX_RESOLUTION or m.resolution & (m.resolution - 1):
        raise ConfigError(f"model.resolution must be a power of two from 16 to {MAX_RESOLUTION}, got {m.resolution}")
    if m.num_categories < 1:
        raise ConfigError(f"model.num_categories (N) must be >= 1, got {m.num_categories}")
    if m.ngf < 4 or m.ngf % 4:
        raise ConfigError(f"model.ngf must be a multiple of 4 and >= 4, got {m.ngf}")
    n_up = int(math.log2(m.resolution)) - 2
    if (8 * m.ngf) >> n_up < 1 or ((8 * m.ngf) % (1 << n_up)):
        raise ConfigError(
            f"model.ngf={m.ngf} is too small for resolution {m.resolution}: "
            f"8*ngf must be divisible by 2^{n_up} (halved at each of {n_up} upBlocks)")
    if m.seg_depth < 1 or m.resolution >> m.seg_depth < 2:
        raise ConfigError(f"model.seg_depth must be in 1..{int(math.log2(m.resolution)) - 1}, got {m.seg_depth}")
    for name in ("z_dim", "subnet_width", "dz_width", "info_width", "seg_width"):
        if getattr(m, name) < 1:
            raise ConfigError(f"model.{name} must be >= 1, got {getattr(m, name)}")


def validate_stages(cfg: ComGANConfig) -> None:
    s1, s2 = cfg.stage1, cfg.stage2
    for key in ("stage1.beta", "stage1.composite_info_weight", "stage2.adv_weight"):
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value < 0:
            raise ConfigError(f"{key} must be >= 0, got {value}")
    if s1.mask_area_weight < 0 or not 0 < s1.mask_area_max <= 1:
        raise ConfigError(f"stage1.mask_area_weight must be >= 0 and stage1.mask_area_max in (0, 1], "
                          f"got {s1.mask_area_weight} and {s1.mask_area_max}")
    try:
        parse_policy(s1.augment)
    except ValueError as e:
        raise ConfigError(f"stage1.augment: {e}") from None
    if s1.mask_border_weight < 0:
        raise ConfigError(f"stage1.mask_border_weight must be >= 0, got {s1.mask_border_weight}")
    st = s2.self_train
    if st.colour_bins < 0 or st.colour_bins > 64:
        raise ConfigError(f"stage2.self_train.colour_bins must be in 0..64 (0 = off), got {st.colour_bins}")
    if st.weight < 0 or st.start < 0:
        raise ConfigError(f"stage2.self_train.weight and stage2.self_train.start must be >= 0, got "
                          f"{st.weight} and {st.start}")
    if not 0 <= st.area_guard < 1:
        raise ConfigError(f"stage2.self_train.area_guard must be in [0, 1) (0 = off), got {st.area_guard}")
    if s2.lam < 0:
        raise ConfigError(f"stage2.lam (lambda) must be >= 0, got {s2.lam}")
    if s1.beta_warmup < 0:
        raise ConfigError(f"stage1.beta_warmup must be >= 0 steps (0 = off), got {s1.beta_warmup}")
    for stage_name, stage in (("stage1", s1), ("stage2", s2)):
        if stage.steps < 0:
            raise ConfigError(f"{stage_name}.steps must be >= 0, got {stage.steps}")
        if stage.lr <= 0:
            raise ConfigError(f"{stage_name}.lr must be > 0, got {stage.lr}")
        if stage.batch_size < 1:
            raise ConfigError(f"{stage_name}.batch_size must be >= 1, got {stage.batch_size}")
