"""cluster/photo_segmenter.py's pixel work, without a job around it: mask probabilities upsampled
to the photo's size before they are thresholded, and overlays drawn in uint8 (bounded memory with
--overlays, issue 27 point 16). The whole job, photos to files, is tests/jobs/test_segment_images.py's."""
from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from cluster.photo_segmenter import BACKGROUND_DIM, dim_background, full_size_mask, overlay_jpeg

BRIGHT, DARK = 230, 25


def test_probabilities_are_upsampled_bilinearly_then_thresholded():
    """A 1x2 probability map [0, 0.8] at 8x1 px: bilinear gives 0 0 .1 .3 .5 .7 .8 .8 (nearest
    would give four foreground pixels at any threshold below 0.8)."""
    prob = torch.tensor([[[0.0, 0.8]]])
    assert full_size_mask(prob, (8, 1), 0.5).tolist() == [[False] * 5 + [True] * 3]
    assert full_size_mask(prob, (8, 1), 0.25).tolist() == [[False] * 3 + [True] * 5]


def test_the_overlay_path_never_makes_a_float64_array():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    keep = rng.random((30, 40)) > 0.5
    out = dim_background(rgb, keep)
    assert out.dtype == np.uint8 and out.shape == rgb.shape
    old = np.where(keep[..., None], rgb, (rgb * BACKGROUND_DIM).astype(np.uint8))
    assert np.array_equal(out, old), "the same pixels as the float formula"

    # the whole overlay of a 3 MP photo: no array of 8 (or 4) bytes per channel on the way
    import tracemalloc

    width, height = 2000, 1500
    photo = np.full((height, width, 3), DARK, np.uint8)
    photo[:, : int(0.4 * width)] = BRIGHT  # a bright object on the left
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, format="JPEG", quality=90)
    data, keep = buf.getvalue(), photo[..., 0] > 127
    tracemalloc.start()
    try:
        jpeg = overlay_jpeg(data, keep)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    photo_bytes = width * height * 3
    assert peak < 3.5 * photo_bytes, f"peak {peak / photo_bytes:.1f} x the uint8 photo"
    shown = np.asarray(Image.open(io.BytesIO(jpeg)))
    assert shown.shape == (height, width, 3) and shown[0, 0, 0] > 200 and shown[0, -1, 0] < 20
