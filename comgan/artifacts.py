"""The one checkpoint format: a dict saved with torch.save.

Training checkpoints hold every network, optimiser, step counter, RNG state and the resolved
config. Exported artifacts (the stage handoff) hold one network and the model config it needs:
`generator.pt` (G_ema) and `segmenter.pt` (S). Loading an artifact checks its kind and that its
architecture fits the config it is used with, naming both values on a mismatch.
"""
from __future__ import annotations

import io
import pickle
from dataclasses import asdict

import torch

from .config import ModelConfig, model_config_from_dict
from .networks import Generator, UNet

FORMAT_VERSION = 1
GENERATOR_KEYS = ("resolution", "z_dim", "num_categories", "ngf", "subnet_width")
SEGMENTER_KEYS = ("resolution", "seg_width", "seg_depth")


class ArtifactError(ValueError):
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
    saved = model_config_from_dict(obj["model"])
    if expected is not None:
        for key in keys:
            a, b = getattr(saved, key), getattr(expected, key)
            if a != b:
                raise ArtifactError(f"{what} does not fit this run: model.{key} is {a} in the artifact but {b} in the config")
    return saved


def load_generator(obj: dict, expected: ModelConfig | None = None, what: str = "generator") -> tuple[Generator, ModelConfig]:
    if obj.get("kind") != "comgan.generator":
        raise ArtifactError(f"{what} is a {obj.get('kind')!r} file, not a generator (comgan.generator)")
    cfg = check_fits(obj, expected, GENERATOR_KEYS, what)
    g = Generator(cfg)
    g.load_state_dict(obj["state_dict"])
    return g.eval().requires_grad_(False), cfg


def load_segmenter(obj: dict, expected: ModelConfig | None = None, what: str = "segmenter") -> tuple[UNet, ModelConfig]:
    if obj.get("kind") != "comgan.segmenter":
        raise ArtifactError(f"{what} is a {obj.get('kind')!r} file, not a segmenter (comgan.segmenter)")
    cfg = check_fits(obj, expected, SEGMENTER_KEYS, what)
    s = UNet(cfg.seg_width, cfg.seg_depth)
    s.load_state_dict(obj["state_dict"])
    return s.eval().requires_grad_(False), cfg
