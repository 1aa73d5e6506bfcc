"""One config for everything: model, both training stages, data and the run.

Defaults here are the laptop default (32 px, CPU, about 10 minutes). Named presets live in
`comgan/configs/<name>.yaml` and only list what they change; `--config` also takes a path to
any YAML file of the same shape. Command-line overrides are dotted `key=value` pairs, e.g.
`stage1.beta=0.5 model.num_categories=10`.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path

import yaml

PRESET_DIR = Path(__file__).parent / "configs"
MIXED_PRECISION = ("no", "bf16", "fp16")


class ConfigError(ValueError):
    """A user mistake in a config file or override; printed as one line, never a traceback."""


@dataclass
class ModelConfig:
    resolution: int = 32        # image side; power of two >= 16 (paper: 128)
    z_dim: int = 100            # noise size
    z_scale: float = 4.0        # z ~ N(0, 1) * z_scale, as in the authors' code
    num_categories: int = 6     # N: size of the independent one-hot codes f and b (paper: 200)
    ngf: int = 16               # generator width: 8*ngf channels at 4x4, halved by each upBlock (paper: 64)
    subnet_width: int = 16      # width of the F, B and M subnets (paper: 128 = 2*ngf)
    dz_width: int = 32          # D_z base width (paper: 32)
    dz_aux_logits: int = 0      # unused code head of the authors' D_z; kept only to reproduce it (paper: 20)
    info_width: int = 32        # D_f / D_b base width (paper: 64)
    seg_width: int = 16         # U-Net base filters, doubled at each level (paper: 64)
    seg_depth: int = 3          # U-Net down-sampling levels (paper: 4)
    dm_width: int = 32          # D_m base width (paper: 32)


@dataclass
class Stage1Config:
    steps: int = 800            # one step = one D_z update + one G/D_f/D_b update (~8 min on 2 CPU cores)
    batch_size: int = 32        # global batch, split evenly across workers
    lr: float = 2e-4            # Adam learning rate of both optimisers
    adam_beta1: float = 0.5
    adam_beta2: float = 0.999
    beta: float = 1.0           # weight of the mask binary-entropy term
    mask_area_weight: float = 20.0  # weight of a hinge keeping each mask's area in [min, 1 - min] (not in the paper: 0)
    mask_area_min: float = 0.05    # the hinge's bound: forbids only (nearly) empty or full masks
    ema_decay: float = 0.999    # G_ema decay, ramped up from 0 over the first steps
    bn_recalibration_batches: int = 20  # re-estimate G_ema's BatchNorm statistics before export
    orient_mask: bool = True    # at export, swap F/B if the mask covers the border (the background)


@dataclass
class Stage2Config:
    steps: int = 400            # one step = one D_m update + one S update (~3 min on 2 CPU cores)
    batch_size: int = 32        # global batch of generated and of real images, each
    # S and D_m. Paper: 2e-4 over tens of thousands of steps; Adam moves each weight by about lr
    # per step, and at 2e-4 S's output layer needs ~1000 steps just to leave 0.5 (measured on the
    # default: strict IoU 0.23 after 500 steps at 2e-4, 0.81 at 1e-3).
    lr: float = 1e-3
    adam_beta1: float = 0.5
    adam_beta2: float = 0.999
    lam: float = 2.0            # lambda: weight of the L1 consistency S(x_bar) ~ x_bar_m
    # The stage-1 artifact (generator.pt, any URL) stage 2 learns from; empty: this run's own
    # stage1/generator.pt, trained first. jobs/segment.py --generator sets it.
    generator: str = ""
    adv_weight: float = 1.0     # weight of S's adversarial terms against D_m (paper: 1)


@dataclass
class DataConfig:
    train: str = "data_shards/synthetic/train"  # training shards (folder or URL); images only are used
    eval: str = "data_shards/synthetic/eval"    # held-out shards with ground-truth masks
    synthetic: bool = True      # write the built-in synthetic set to `train`/`eval` if missing
    synthetic_train_size: int = 10000  # 800 steps of 32 see each image about 2.5 times
    synthetic_eval_size: int = 500
    synthetic_styles: int = 4   # K foreground and K background styles
    samples_per_shard: int = 1000
    loader_workers: int = 1     # DataLoader processes per training worker
    hflip: bool = True          # random horizontal flips of real images


@dataclass
class StorageConfig:
    # Explicit, non-secret S3 options for data and runs; empty = the standard AWS environment and
    # config files decide (AWS_ENDPOINT_URL, AWS_REGION, AWS_PROFILE, ~/.aws, instance roles).
    # Credentials have no keys here on purpose: they never belong in a config that is saved.
    endpoint_url: str = ""      # S3-compatible server, e.g. http://minio.internal:9000
    region: str = ""            # e.g. eu-west-1
    profile: str = ""           # a named profile from ~/.aws/config
    anonymous: bool = False     # unsigned requests, for public buckets


@dataclass
class RunConfig:
    name: str = ""              # run folder under storage; empty: the config's name
    storage: str = "runs"       # where runs live: local folder or fsspec URL
    workers: int = 1            # Ray Train workers (data-parallel processes)
    cpus_per_worker: int = 0    # 0: all CPUs of the node split across workers
    use_gpu: bool = False       # one GPU per worker
    mixed_precision: str = "no" # no, bf16 (CPU or GPU) or fp16 (GPU only, with loss scaling)
    seed: int = 0
    log_every: int = 50         # steps between progress lines and scalar logs
    image_every: int = 500      # steps between image grids in TensorBoard
    checkpoint_every: int = 500 # steps between checkpoints (and one at the end of each stage)
    keep_checkpoints: int = 2   # newest checkpoints kept per stage; older ones are deleted
    max_failures: int = 2       # worker-group restarts (from the latest checkpoint) before a stage fails


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    data: DataConfig = field(default_factory=DataConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    run: RunConfig = field(default_factory=RunConfig)
    preset: str = "default"     # which preset or file this config came from

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @property
    def run_name(self) -> str:
        return self.run.name or self.preset


# ---------------------------------------------------------------------------------------------
# Loading, overrides, validation


def load_config(source: str | None = None, overrides: list[str] | tuple = ()) -> Config:
    """Build a validated Config from a preset name or YAML path, then `key=value` overrides."""
    cfg = Config()
    if source and source != "default":
        path = _resolve_source(source)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"cannot parse {path}: {str(e).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a mapping of sections, got {type(data).__name__}")
        data.pop("preset", None)
        _apply_mapping(cfg, data, prefix="")
        cfg.preset = path.stem if path.parent == PRESET_DIR else path.stem
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. stage1.beta=0.5)")
        _set_key(cfg, key.strip(), value.strip())
    validate(cfg)
    return cfg


def config_from_dict(data: dict) -> Config:
    """Rebuild a Config written by `Config.to_dict` (checkpoints, exported artifacts)."""
    cfg = Config()
    data = dict(data)
    preset = data.pop("preset", "default")
    _apply_mapping(cfg, data, prefix="")
    cfg.preset = preset
    validate(cfg)
    return cfg


def model_config_from_dict(data: dict) -> ModelConfig:
    cfg = ModelConfig()
    _apply_mapping(cfg, data, prefix="model.")
    return cfg


def _resolve_source(source: str) -> Path:
    path = Path(source)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file {source} not found")
        return path
    preset = PRESET_DIR / f"{source}.yaml"
    if not preset.is_file():
        names = ", ".join(sorted(["default"] + [p.stem for p in PRESET_DIR.glob("*.yaml")]))
        raise ConfigError(f"unknown config {source!r}: give a YAML file or one of: {names}")
    return preset


def _apply_mapping(obj, data: dict, prefix: str) -> None:
    for key, value in data.items():
        full = f"{prefix}{key}"
        target = _field(obj, key, full)
        current = getattr(obj, key)
        if is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{full} is a section; give a mapping, not {value!r}")
            _apply_mapping(current, value, prefix=full + ".")
        else:
            setattr(obj, key, _coerce(value, target, full))


def _set_key(cfg: Config, dotted: str, text: str) -> None:
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


def validate(cfg: Config) -> None:
    m = cfg.model
    if m.resolution < 16 or m.resolution & (m.resolution - 1):
        raise ConfigError(f"model.resolution must be a power of two >= 16, got {m.resolution}")
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
    for name in ("z_dim", "subnet_width", "dz_width", "info_width", "seg_width", "dm_width"):
        if getattr(m, name) < 1:
            raise ConfigError(f"model.{name} must be >= 1, got {getattr(m, name)}")
    if m.dz_aux_logits < 0:
        raise ConfigError(f"model.dz_aux_logits must be >= 0, got {m.dz_aux_logits}")
    s1, s2 = cfg.stage1, cfg.stage2
    if s1.beta < 0:
        raise ConfigError(f"stage1.beta must be >= 0, got {s1.beta}")
    if s1.mask_area_weight < 0 or not 0 <= s1.mask_area_min < 0.5:
        raise ConfigError(f"stage1.mask_area_weight must be >= 0 and stage1.mask_area_min in [0, 0.5), got "
                          f"{s1.mask_area_weight} and {s1.mask_area_min}")
    if s2.adv_weight < 0:
        raise ConfigError(f"stage2.adv_weight must be >= 0, got {s2.adv_weight}")
    if s2.lam < 0:
        raise ConfigError(f"stage2.lam (lambda) must be >= 0, got {s2.lam}")
    if not 0 <= s1.ema_decay < 1:
        raise ConfigError(f"stage1.ema_decay must be in [0, 1), got {s1.ema_decay}")
    for stage_name, stage in (("stage1", s1), ("stage2", s2)):
        if stage.steps < 0:
            raise ConfigError(f"{stage_name}.steps must be >= 0, got {stage.steps}")
        if stage.lr <= 0:
            raise ConfigError(f"{stage_name}.lr must be > 0, got {stage.lr}")
        if stage.batch_size < 1:
            raise ConfigError(f"{stage_name}.batch_size must be >= 1, got {stage.batch_size}")
        if stage.batch_size % cfg.run.workers:
            raise ConfigError(
                f"{stage_name}.batch_size={stage.batch_size} is the global batch and must divide "
                f"evenly across run.workers={cfg.run.workers}")
    r = cfg.run
    if r.workers < 1:
        raise ConfigError(f"run.workers must be >= 1, got {r.workers}")
    if r.cpus_per_worker < 0:
        raise ConfigError(f"run.cpus_per_worker must be >= 0, got {r.cpus_per_worker}")
    for name in ("log_every", "image_every", "checkpoint_every", "keep_checkpoints"):
        if getattr(r, name) < 1:
            raise ConfigError(f"run.{name} must be >= 1, got {getattr(r, name)}")
    if r.max_failures < -1:
        raise ConfigError(f"run.max_failures must be >= 0 (or -1: retry forever), got {r.max_failures}")
    if r.mixed_precision not in MIXED_PRECISION:
        raise ConfigError(f"run.mixed_precision must be one of {', '.join(MIXED_PRECISION)}, got {r.mixed_precision!r}")
    if r.mixed_precision == "fp16" and not r.use_gpu:
        # accelerate accepts fp16 on CPU but then silently trains in fp32
        raise ConfigError("run.mixed_precision=fp16 needs GPUs (run.use_gpu=true); on CPU use bf16 or no")
    if r.name and (r.name.startswith(".") or any(c in r.name for c in "/\\ ")):
        raise ConfigError(f"run.name must be a plain folder name without '/', '\\' or spaces, not starting "
                          f"with '.', got {r.name!r}")
    endpoint = cfg.storage.endpoint_url
    if endpoint and not endpoint.startswith(("http://", "https://")):
        raise ConfigError(f"storage.endpoint_url must start with http:// or https://, got {endpoint!r}")
    if "@" in endpoint.split("://", 1)[-1]:
        raise ConfigError("storage.endpoint_url must not carry credentials; use the AWS environment or a profile")
    d = cfg.data
    if d.loader_workers < 0:
        raise ConfigError(f"data.loader_workers must be >= 0, got {d.loader_workers}")
    if d.synthetic and (d.synthetic_train_size < 1 or d.synthetic_eval_size < 1 or d.synthetic_styles < 1):
        raise ConfigError("data.synthetic_train_size, synthetic_eval_size and synthetic_styles must be >= 1")
    if d.samples_per_shard < 1:
        raise ConfigError(f"data.samples_per_shard must be >= 1, got {d.samples_per_shard}")
