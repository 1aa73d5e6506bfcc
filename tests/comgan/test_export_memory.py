"""The export's no-grad passes run in chunks: peak memory follows the chunk, not the sample count.

At the paper architecture (128 px, ngf 64, N 200) one generated image costs about 70 MB of
activations on CPU, so the end-of-stage-1 checks over 512 images in one batch would need tens of
GB. Measured in a fresh process (ru_maxrss is a high-water mark), with orientation off to keep
the test short: 16 images (8 to re-estimate BatchNorm, 8 for the mask checks) in chunks of 2 grow
the peak by about 270 MB; the same export unchunked (chunk 8) grows it by about 660 MB, which the
bound refuses.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import json, resource, sys, torch
from cluster.config import load_config
from comgan.export import export_generator
from comgan.networks import Generator
torch.set_num_threads(1)
chunk, n = int(sys.argv[1]), int(sys.argv[2])
cfg = load_config("paper", [f"stage1.batch_size={n}", "stage1.orient_mask=false"])
g = Generator(cfg.model).eval().requires_grad_(False)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
_, done, health = export_generator(g, cfg, chunk=chunk, health_samples=n, recalibration_batches=1)
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps({"grown_mb": grown, "done": done, "health": health}))
"""


def export_peak_growth_mb(chunk: int, samples: int) -> dict:
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(chunk), str(samples)], cwd=ROOT, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_export_at_the_paper_architecture_stays_within_its_chunk():
    result = export_peak_growth_mb(chunk=2, samples=8)
    assert result["done"]["bn_recalibrated"] and 0 <= result["health"]["mask/mean"] <= 1
    assert result["grown_mb"] < 400, f"export grew the peak by {result['grown_mb']:.0f} MB with chunks of 2 images"
