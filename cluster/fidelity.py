"""FID and Inception Score of a generator's composites against real images.

The detector is the TorchScript Inception network of the StyleGAN2-ADA / StyleGAN3 metrics,
`inception-2015-12-05.pt` (a direct translation of TensorFlow's 2015 Inception, so FIDs compare
with published ones). Nothing is downloaded at run time: the user gives the file, from a local
path or any URL, e.g. fetched once with

    wget https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt

Its interface, which any TorchScript replacement must keep: uint8 images [N, 3, H, W] of any size
in; `detector(x, return_features=True)` gives the 2048 pool features (FID),
`detector(x, no_output_bias=True)` the 1008 class probabilities (IS, as in the original code).

Generated images are the exported G_ema's composites x_bar for codes drawn from a seeded generator
(the same seed, the same images); real images are the first `num_real` of a shard set, read at the
generator's resolution so both sides are seen the same way.
"""
from __future__ import annotations

import io
import time

import torch

from comgan.artifacts import from_bytes, load_generator
from comgan.config import ComGANConfig
from comgan.errors import UserError
from comgan.export import code_batches
from comgan.metrics import feature_statistics, frechet_distance, inception_score
from data_shards.io import read_bytes
from data_shards.reader import image_batches

DETECTOR_FILE = "inception-2015-12-05.pt"
DETECTOR_SOURCE = f"https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/{DETECTOR_FILE}"
FIDELITY_SEED = 123


class DetectorError(UserError):
    """The Inception detector file is missing or unusable (a user mistake: one line, exit 2)."""


def load_detector(url: str) -> torch.jit.ScriptModule:
    try:
        data = read_bytes(url)
    except FileNotFoundError:
        raise DetectorError(f"FID/IS need the Inception detector {DETECTOR_FILE} (TorchScript), and {url} does not "
                            f"exist: fetch it once from {DETECTOR_SOURCE} and give its path or URL") from None
    try:
        return torch.jit.load(io.BytesIO(data), map_location="cpu").eval()
    except (RuntimeError, ValueError) as e:
        raise DetectorError(f"{url} is not a TorchScript detector like {DETECTOR_FILE} "
                            f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats to the 0..255 uint8 images the detector expects."""
    return ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


@torch.no_grad()
def detect(detector, images: torch.Tensor, want_probs: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    x = to_uint8(images)
    features = detector(x, return_features=True).double()
    probs = detector(x, no_output_bias=True).double() if want_probs else None
    return features, probs


def _check_detector(features: torch.Tensor, probs: torch.Tensor | None, n: int, url: str) -> None:
    if features.dim() != 2 or features.shape[0] != n or (probs is not None and probs.shape[0] != n):
        raise DetectorError(f"{url} does not behave like {DETECTOR_FILE}: for {n} images it returned features "
                            f"of shape {tuple(features.shape)}")


@torch.no_grad()
def generated_outputs(generator_url: str, detector, detector_url: str, num: int, batch: int,
                      seed: int = FIDELITY_SEED) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Detector features and class probabilities of `num` generated composites; the resolution."""
    g, model = load_generator(from_bytes(read_bytes(generator_url), generator_url), what=generator_url)
    feats, probs = [], []
    for z, f, b in code_batches(ComGANConfig(model=model), num, batch, seed, "cpu"):
        fe, pr = detect(detector, g(z, f, b).image, want_probs=True)
        _check_detector(fe, pr, len(z), detector_url)
        feats.append(fe)
        probs.append(pr)
    return torch.cat(feats), torch.cat(probs), model.resolution


@torch.no_grad()
def real_features(data_url: str, detector, detector_url: str, num: int, batch: int, resolution: int) -> torch.Tensor:
    feats = []
    for images in image_batches(data_url, batch, resolution=resolution, limit=num):
        fe, _ = detect(detector, images, want_probs=False)
        _check_detector(fe, None, len(images), detector_url)
        feats.append(fe)
    return torch.cat(feats)


def fidelity(generator_url: str, real_url: str, detector_url: str, num_generated: int = 5000,
             num_real: int = 50000, batch: int = 32, splits: int = 10) -> dict:
    """{"fid", "is_mean", "is_std", counts, seconds} of the generator against the real set. FID is
    biased upwards for small sample counts: compare runs at the same counts only."""
    t0 = time.time()
    detector = load_detector(detector_url)
    fake, probs, resolution = generated_outputs(generator_url, detector, detector_url, num_generated, batch)
    real = real_features(real_url, detector, detector_url, num_real, batch, resolution)
    if len(real) < 2 or len(fake) < 2:
        raise ValueError(f"FID needs at least 2 images on each side (got {len(real)} real, {len(fake)} generated)")
    is_mean, is_std = inception_score(probs, splits)
    return {"fid": frechet_distance(*feature_statistics(fake), *feature_statistics(real)),
            "is_mean": is_mean, "is_std": is_std, "num_generated": len(fake), "num_real": len(real),
            "resolution": resolution, "detector": detector_url, "seconds": round(time.time() - t0, 1)}
