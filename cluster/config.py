"""The run config: the one config a job is given, in one YAML shape.

It is comgan's model and stage settings (comgan/config.py) plus the sections of the layers that
use them: `data` and `storage` (data_shards/config.py) and `run` (how and where the job runs,
below). Named presets live in `cluster/configs/<name>.yaml` and list only what they change;
`--config` also takes a path to any YAML file of the same shape. Command-line overrides are
dotted `key=value` pairs, e.g. `stage1.beta=0.5 model.num_categories=10`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from comgan.config import ComGANConfig, ConfigError, apply_mapping, current_keys, set_key, trained_stages
from comgan.config import validate as validate_model_and_stages
from data_shards.config import DataConfig, StorageConfig
from data_shards.io import redacted

PRESET_DIR = Path(__file__).parent / "configs"
MIXED_PRECISION = ("no", "bf16", "fp16")

__all__ = ["Config", "ConfigError", "RunConfig", "load_config", "config_from_dict", "PRESET_DIR"]


@dataclass
class RunConfig:
    name: str = ""              # run folder under storage; empty: the config's name
    storage: str = "runs"       # where runs live: local folder or fsspec URL
    workers: int = 1            # Ray Train workers (data-parallel processes)
    # CPUs Ray reserves per worker; 0 (auto): this machine's split across the workers. A cluster run
    # with GPUs must name it (e.g. 3 on a 4-vCPU GPU node): its nodes may not be up when the job starts.
    cpus_per_worker: int = 0
    use_gpu: bool = False       # one GPU per worker
    mixed_precision: str = "no" # no, bf16 (CPU or GPU) or fp16 (GPU only, with loss scaling)
    seed: int = 0               # the run's random seed: initial weights, codes and the data order
    log_every: int = 50         # steps between progress lines and scalar logs
    image_every: int = 500      # steps between image grids in TensorBoard
    checkpoint_every: int = 500 # steps between checkpoints (and one at the end of each stage)
    keep_checkpoints: int = 2   # newest checkpoints kept per stage; older ones are deleted
    max_failures: int = 2       # worker-group restarts (from the latest checkpoint) before a stage fails
    # Stage-1 steps between checks of G_ema's layer split by the trivial-solution watchdog (0: off;
    # comgan/watchdog.py), plus one at the end: a failed run says so in its log and summary.
    watch_every: int = 250
    # Times stage 1 may start over (seed + 1000 * k) on a trivial solution (0: the watchdog only warns;
    # docs/outputs.md). Off by default: no restart of the default job has paid yet.
    collapse_restarts: int = 0
    watch_patience: int = 2     # checks in a row that must find a trivial solution before stage 1 starts over


@dataclass
class Config(ComGANConfig):
    data: DataConfig = field(default_factory=DataConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    run: RunConfig = field(default_factory=RunConfig)
    preset: str = "default"     # which preset or file this config came from

    def to_yaml(self) -> str:
        """The config as it is saved (config.yaml) and printed (--print-config): credentials in
        URL values (user:password@, presigned signatures) redacted; the Config keeps the real ones."""
        return yaml.safe_dump(redacted(self.to_dict()), sort_keys=False)

    @property
    def run_name(self) -> str:
        return self.run.name or self.preset


def load_config(source: str | None = None, overrides: list[str] | tuple = ()) -> Config:
    """Build a validated Config from a preset name or YAML path, then `key=value` overrides."""
    cfg = Config()
    if source == "":  # an unset shell variable, not a request for the default preset
        raise ConfigError(f"--config is empty: give a preset ({preset_names()}) or a YAML file")
    if source and source != "default":
        path = _resolve_source(source)
        data = _read_yaml(path)
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a mapping of sections, got {type(data).__name__}")
        data.pop("preset", None)
        apply_mapping(cfg, data)
        cfg.preset = path.stem
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. stage1.beta=0.5)")
        set_key(cfg, key.strip(), value.strip())
    validate(cfg)
    return cfg


def config_from_dict(data: dict) -> Config:
    """Rebuild a Config written by `Config.to_dict` (checkpoints, run folders), by this version or
    an earlier one: keys retired since are renamed or dropped (comgan.config.RETIRED_KEYS)."""
    cfg = Config()
    data = current_keys(data)
    preset = data.pop("preset", "default")
    apply_mapping(cfg, data)
    cfg.preset = preset
    validate(cfg)
    return cfg


def _read_yaml(path: Path):
    """The YAML document in a config file; a file that is not UTF-8 text (a checkpoint or an image
    given by mistake) or not YAML is one ConfigError naming it."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a YAML text file (not UTF-8 text): give a preset or a config YAML") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"cannot parse {path}: {str(e).splitlines()[0]}") from None


def preset_names() -> str:
    return ", ".join(sorted(["default"] + [p.stem for p in PRESET_DIR.glob("*.yaml")]))


def _resolve_source(source: str) -> Path:
    path = Path(source)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file {source} not found")
        return path
    preset = PRESET_DIR / f"{source}.yaml"
    if not preset.is_file():
        raise ConfigError(f"unknown config {source!r}: give a YAML file or one of: {preset_names()}")
    return preset


def validate(cfg: Config) -> None:
    r = cfg.run
    # Checked first: the batch checks below divide by the worker count. The model-and-stages check
    # then refuses NaN and inf in every section, data, storage and run included, before any range.
    if r.workers < 1:
        raise ConfigError(f"run.workers must be >= 1, got {r.workers}")
    validate_model_and_stages(cfg)
    for stage_name in trained_stages(cfg):  # a stage that does not run (ReDO's stage 1) is not checked
        batch = getattr(cfg, stage_name).batch_size
        if batch % r.workers:
            raise ConfigError(f"{stage_name}.batch_size={batch} is the global batch and must divide "
                              f"evenly across run.workers={r.workers}")
    if cfg.model.variant == "redo" and cfg.stage2.batch_size < 2 * r.workers:
        raise ConfigError(f"stage2.batch_size={cfg.stage2.batch_size} gives each of run.workers={r.workers} fewer "
                          "than 2 images: ReDO redraws each of its 2 regions on part of every worker's batch")
    if r.cpus_per_worker < 0:
        raise ConfigError(f"run.cpus_per_worker must be >= 0 (0: auto), got {r.cpus_per_worker}")
    for name in ("log_every", "image_every", "checkpoint_every", "keep_checkpoints"):
        if getattr(r, name) < 1:
            raise ConfigError(f"run.{name} must be >= 1, got {getattr(r, name)}")
    if r.watch_every < 0:
        raise ConfigError(f"run.watch_every must be >= 0 (0: off), got {r.watch_every}")
    if r.collapse_restarts < 0 or r.watch_patience < 1:
        raise ConfigError(f"run.collapse_restarts must be >= 0 (0: never) and run.watch_patience >= 1, got "
                          f"{r.collapse_restarts} and {r.watch_patience}")
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
    for section in (cfg.storage, cfg.data):
        try:
            section.validate()
        except ValueError as e:
            raise ConfigError(str(e)) from None
