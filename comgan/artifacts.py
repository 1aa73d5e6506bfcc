"""The one checkpoint format: a dict saved with torch.save.

Training checkpoints hold every network, optimiser, step counter, RNG state and the resolved
config. Exported artifacts (the stage handoff) hold one network and the model config it needs:
`generator.pt` (G_ema) and `segmenter.pt` (S, or ReDO's mask network). Loading an artifact checks its kind, its saved model
section (a config's ranges, and bounded sizes: it may come from any URL) and that its architecture
fits the config it is used with, naming both values on a mismatch, all before a network is built.
"""
from __future__ import annotations

import io
import math
import pickle
from dataclasses import asdict

import torch

from .config import ConfigError, ModelConfig, model_config_from_dict
from .errors import UserError
from .networks import Generator, UNet
from .redo import REGIONS, ObjectMask

FORMAT_VERSION = 1
GENERATOR_KEYS = ("resolution", "z_dim", "num_categories", "ngf", "subnet_width")
SEGMENTER_KEYS = ("resolution", "seg_width", "seg_depth")
# What an artifact may ask us to build and feed: an artifact comes from any URL, and a 1 KB file
# must not make a job allocate until it dies. Generous: the paper's G has 8.6 M parameters, its S
# (64 filters, depth 4) 34.5 M, and it works at 128 px.
MAX_PARAMETERS = 200_000_000  # per network


class ArtifactError(UserError):
    """An artifact that is not what it claims or does not fit the run; one-line message."""


def to_bytes(obj: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def from_bytes(data: bytes, what: str = "checkpoint") -> dict:
    """Load a file this project wrote. `weights_only=True`: everything we save is tensors and plain
    Python types, and an artifact may come from any URL, so a file that needs pickled code to load
    (which could run anything on the cluster) is refused, never executed."""
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        detail = next((line.strip() for line in str(e).splitlines() if "global" in line.lower()), None)
        if detail is None:  # not a pickle that names code: a foreign or damaged file
            raise ArtifactError(f"{what} is not a readable torch file (UnpicklingError)") from None
        raise ArtifactError(f"{what} is refused: loading it would run pickled code ({detail[:160]}); "
                            "DS-ComGAN files hold only tensors and plain types") from None
    except Exception as e:  # a truncated or foreign file: say so in one line
        raise ArtifactError(f"{what} is not a readable torch file ({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(obj, dict) or "kind" not in obj:
        raise ArtifactError(f"{what} is not a DS-ComGAN file (no 'kind' entry)")
    return obj


def generator_artifact(g_ema: torch.nn.Module, model_cfg: ModelConfig, extra: dict | None = None) -> dict:
    return {"kind": "comgan.generator", "format": FORMAT_VERSION, "model": asdict(model_cfg),
            "state_dict": g_ema.state_dict(), **(extra or {})}


def segmenter_artifact(s: torch.nn.Module, model_cfg: ModelConfig, extra: dict | None = None) -> dict:
    return {"kind": "comgan.segmenter", "format": FORMAT_VERSION, "model": asdict(model_cfg),
            "state_dict": s.state_dict(), **(extra or {})}


def check_fits(obj: dict, expected: ModelConfig | None, keys, what: str) -> ModelConfig:
    saved = saved_model(obj, what)
    if expected is not None:
        for key in keys:
            a, b = getattr(saved, key), getattr(expected, key)
            if a != b:
                raise ArtifactError(f"{what} does not fit this run: model.{key} is {a} in the artifact but {b} in the config")
    return saved


def saved_model(obj: dict, what: str) -> ModelConfig:
    """The artifact's model section, checked with a config's ranges (MAX_RESOLUTION included)."""
    if not isinstance(obj.get("model"), dict):
        raise ArtifactError(f"{what} has no model section")
    try:
        saved = model_config_from_dict(obj["model"])
    except ConfigError as e:
        raise ArtifactError(f"{what}: {e}") from None
    return saved


def build_checked(make, cfg: ModelConfig, keys, obj: dict, what: str) -> torch.nn.Module:
    """`make()` with the artifact's weights, once the network is known to stay within
    MAX_PARAMETERS: counted first on the meta device, which allocates nothing."""
    count = parameter_count(make)
    if count > MAX_PARAMETERS:
        sizes = ", ".join(f"model.{key}={getattr(cfg, key)}" for key in keys)
        counted = f"{count:,}" if math.isfinite(count) else "more than int64 can count"
        raise ArtifactError(f"{what}: its model ({sizes}) would have {counted} parameters; an artifact may "
                            f"have at most {MAX_PARAMETERS:,}")
    if not isinstance(obj.get("state_dict"), dict):
        raise ArtifactError(f"{what} has no weights (state_dict)")
    net = make()
    try:
        net.load_state_dict(obj["state_dict"])
    except (RuntimeError, TypeError, AttributeError) as e:
        # load_state_dict says "Error(s) in loading state_dict for X:", then one line per mismatch
        lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
        raise ArtifactError(f"{what}: its weights do not fit its model section ({(lines[1:] or lines)[0][:160]})") from None
    return net.eval().requires_grad_(False)


def parameter_count(make) -> float:
    """Parameters of `make()`, built on the meta device. Sizes past int64 do not build even
    there: they count as infinitely many."""
    try:
        with torch.device("meta"):
            return sum(p.numel() for p in make().parameters())
    except (RuntimeError, TypeError, OverflowError):
        return math.inf


def load_generator(obj: dict, expected: ModelConfig | None = None, what: str = "generator") -> tuple[Generator, ModelConfig]:
    if obj.get("kind") != "comgan.generator":
        raise ArtifactError(f"{what} is a {obj.get('kind')!r} file, not a generator (comgan.generator)")
    cfg = check_fits(obj, expected, GENERATOR_KEYS, what)
    return build_checked(lambda: Generator(cfg), cfg, GENERATOR_KEYS, obj, what), cfg


def load_segmenter(obj: dict, expected: ModelConfig | None = None,
                   what: str = "segmenter") -> tuple[torch.nn.Module, ModelConfig]:
    """The segmenter an artifact holds: DS-ComGAN's U-Net S, or ReDO's mask network (model.variant
    redo); either maps images [B, 3, H, W] to object probabilities [B, 1, H, W]."""
    if obj.get("kind") != "comgan.segmenter":
        raise ArtifactError(f"{what} is a {obj.get('kind')!r} file, not a segmenter (comgan.segmenter)")
    cfg = check_fits(obj, expected, SEGMENTER_KEYS, what)
    if cfg.variant == "redo":
        net = build_checked(lambda: ObjectMask(cfg.seg_width), cfg, SEGMENTER_KEYS, obj, what)
        if not 0 <= int(net.region) < REGIONS:
            raise ArtifactError(f"{what}: its object region is {int(net.region)}; ReDO has regions 0 to {REGIONS - 1}")
        return net, cfg
    return build_checked(lambda: UNet(cfg.seg_width, cfg.seg_depth), cfg, SEGMENTER_KEYS, obj, what), cfg
