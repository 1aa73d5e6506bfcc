"""The built-in synthetic dataset: one object on a background, with its exact foreground mask.

Each image shows one object drawn in one of K foreground styles (a saturated hue plus a pattern
attached to the object: solid, stripes, checker, dots, gradient) on one of K background styles
(muted, darker hues with low-frequency textures: smooth noise, gradient, soft waves). Shape
(ellipse, rounded rectangle, star, polygon, blob of ellipses), pose, scale and position are
random; the object covers 10-50 % of the image. This is what DS-ComGAN is meant to pull apart:
N foreground and N background "categories" composed through a mask. The mask is stored for
evaluation only; training never sees it.

Sample i of a set depends only on (seed, i), so a train set and a held-out set are simply two
seeds, and any shard can be regenerated on its own.
"""
from __future__ import annotations

import colorsys
import math
from functools import lru_cache
from typing import Iterator

import numpy as np

FG_PATTERNS = ("solid", "stripes", "checker", "dots", "gradient")
BG_PATTERNS = ("noise", "gradient", "waves")
SHAPES = ("ellipse", "superellipse", "star", "polygon", "blob")
MIN_AREA, MAX_AREA = 0.10, 0.50     # accepted foreground fraction of the image
NOISE = 0.015                       # std of per-pixel noise, in [0, 1] intensity units


@lru_cache(maxsize=8)
def _grid(resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1]; the same shape parameters render any resolution."""
    c = (np.arange(resolution, dtype=np.float32) + 0.5) / resolution * 2 - 1
    return np.meshgrid(c, c)  # x, y; each [H, W]


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32)


@lru_cache(maxsize=256)
def _palette(kind: str, style: int, num_styles: int) -> tuple[np.ndarray, np.ndarray]:
    """(dark, light) colours of a style. Foregrounds are saturated and bright, backgrounds are
    desaturated and dark, and background hues sit halfway between foreground hues, so no
    background style can be mistaken for a foreground style."""
    if kind == "fg":
        h = style / num_styles
        return _hsv(h, 1.0, 0.55), _hsv(h, 0.8, 1.0)
    h = (style + 0.5) / num_styles
    return _hsv(h, 0.35, 0.22), _hsv(h, 0.22, 0.52)


def _shape(rng: np.random.Generator) -> tuple[str, dict, float, float]:
    """A random shape in object units (radius ~1): (name, params, area, bounding radius)."""
    name = SHAPES[rng.integers(len(SHAPES))]
    if name in ("ellipse", "superellipse"):
        a, b = rng.uniform(0.55, 1.0, size=2)
        p = 2.0 if name == "ellipse" else rng.uniform(3.0, 8.0)
        area = 4 * a * b * math.gamma(1 + 1 / p) ** 2 / math.gamma(1 + 2 / p)
        return name, dict(a=a, b=b, p=p), area, max(a, b) * 2 ** (0.5 - 1 / p)
    if name == "star":
        n, amp = int(rng.integers(3, 8)), rng.uniform(0.2, 0.45)
        return name, dict(n=n, amp=amp), math.pi * (1 + amp * amp / 2), 1 + amp
    if name == "polygon":
        n = int(rng.integers(3, 9))
        return name, dict(n=n), n / 2 * math.sin(2 * math.pi / n), 1.0
    k = int(rng.integers(2, 5))
    centres = rng.uniform(-0.45, 0.45, size=(k, 2))
    radii = rng.uniform(0.35, 0.65, size=(k, 2))
    area = 0.6 * math.pi * float((radii[:, 0] * radii[:, 1]).sum())  # overlap guess; area is checked anyway
    return name, dict(centres=centres, radii=radii), area, float((np.hypot(*centres.T) + radii.max(1)).max())


def _inside(name: str, q: dict, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    if name in ("ellipse", "superellipse"):
        return np.abs(u / q["a"]) ** q["p"] + np.abs(v / q["b"]) ** q["p"] <= 1
    if name == "star":
        return np.hypot(u, v) <= 1 + q["amp"] * np.cos(q["n"] * np.arctan2(v, u))
    if name == "polygon":  # distance to the nearest edge normal of a regular n-gon, circumradius 1
        sector = 2 * math.pi / q["n"]
        d = np.mod(np.arctan2(v, u), sector) - sector / 2
        return np.hypot(u, v) * np.cos(d) <= math.cos(math.pi / q["n"])
    inside = np.zeros(u.shape, dtype=bool)
    for (cx, cy), (rx, ry) in zip(q["centres"], q["radii"]):
        inside |= ((u - cx) / rx) ** 2 + ((v - cy) / ry) ** 2 <= 1
    return inside


def _fg_pattern(style: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Pattern in object coordinates, so it moves and turns with the object. 0 dark .. 1 light."""
    f = 1.5  # cycles per object radius: visible at 16 px, not busy at 128 px
    kind = FG_PATTERNS[style % len(FG_PATTERNS)]
    if kind == "solid":
        return np.full(u.shape, 0.8, dtype=np.float32)
    if kind == "stripes":
        return np.floor(u * f) % 2
    if kind == "checker":
        return (np.floor(u * f) + np.floor(v * f)) % 2
    if kind == "dots":
        fu, fv = (u * f) % 1 - 0.5, (v * f) % 1 - 0.5
        return (fu * fu + fv * fv > 0.09).astype(np.float32)
    return np.clip((u + 1) / 2, 0, 1)  # gradient


def _bg_pattern(style: int, rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Low-frequency texture in image coordinates, 0..1. The style fixes the kind of texture; its
    phase and direction vary per image."""
    kind = BG_PATTERNS[style % len(BG_PATTERNS)]
    if kind == "noise":  # a few random plane waves of 0.3-1.2 cycles per image
        t = np.zeros(x.shape, dtype=np.float32)
        for fx, fy, ph in rng.uniform([-1.2, -1.2, 0], [1.2, 1.2, 2 * math.pi], size=(3, 3)):
            t += np.cos(math.pi * (fx * x + fy * y) + ph)
        return 0.5 + t / 6
    a = rng.uniform(0, 2 * math.pi)
    w = math.cos(a) * x + math.sin(a) * y
    if kind == "gradient":
        return (w + 1.42) / 2.84
    return 0.5 + 0.5 * np.cos(math.pi * rng.uniform(1.5, 2.5) * w + rng.uniform(0, 2 * math.pi))  # waves


def _colour(t: np.ndarray, palette: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    dark, light = palette
    return dark + t[..., None].astype(np.float32) * (light - dark)


def render_sample(rng: np.random.Generator, resolution: int, num_styles: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """(image uint8 [H, W, 3], mask uint8 [H, W] in {0, 255}, meta) for one random scene.
    Foreground pixels are exactly those where mask == 255."""
    x, y = _grid(resolution)
    fg_style, bg_style = (int(s) for s in rng.integers(num_styles, size=2))
    for _ in range(100):  # rejection: keep the object's visible area in range
        name, q, unit_area, radius = _shape(rng)
        scale = math.sqrt(rng.uniform(0.12, 0.45) * 4 / unit_area)  # the image is 2 x 2 units
        margin = max(0.0, 1 - 0.75 * scale * radius)  # at most a quarter of the radius leaves the frame
        cx, cy = rng.uniform(-margin, margin, size=2)
        pose = rng.uniform(0, 2 * math.pi)
        c, s = math.cos(pose) / scale, math.sin(pose) / scale
        dx, dy = x - cx, y - cy
        u, v = c * dx + s * dy, c * dy - s * dx
        inside = _inside(name, q, u, v)
        area = float(inside.mean())
        if MIN_AREA <= area <= MAX_AREA:
            break
    else:
        raise RuntimeError("could not place an object with 10-50 % area")  # not seen in practice
    fg = _colour(_fg_pattern(fg_style, u, v), _palette("fg", fg_style, num_styles))
    bg = _colour(_bg_pattern(bg_style, rng, x, y), _palette("bg", bg_style, num_styles))
    image = np.where(inside[..., None], fg, bg)
    image += rng.normal(0, NOISE, size=image.shape).astype(np.float32)
    image = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
    mask = inside.astype(np.uint8) * 255
    return image, mask, {"fg_style": fg_style, "bg_style": bg_style, "area": area}


def synthetic_samples(count: int, resolution: int, num_styles: int, seed: int, start_index: int = 0) -> Iterator[dict]:
    """Samples start_index .. start_index+count-1 of the set `seed`, as writer-ready dicts."""
    for i in range(start_index, start_index + count):
        image, mask, meta = render_sample(np.random.default_rng([seed, i]), resolution, num_styles)
        yield {"key": "%08d" % i, "image": image, "mask": mask, "meta": meta}
