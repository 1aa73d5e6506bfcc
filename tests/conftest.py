"""Fixtures shared by all test packages: tiny shard sets and a real local Ray cluster."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory):
    """The tiny preset's synthetic train/eval shards, written once per session."""
    from comgan.config import load_config
    from data_shards.writer import write_synthetic

    cfg = load_config("tiny")
    root = tmp_path_factory.mktemp("tiny_shards")
    d = cfg.data
    write_synthetic(str(root / "train"), d.synthetic_train_size, cfg.model.resolution, d.synthetic_styles, 1,
                    samples_per_shard=d.samples_per_shard)
    write_synthetic(str(root / "eval"), d.synthetic_eval_size, cfg.model.resolution, d.synthetic_styles, 2,
                    samples_per_shard=d.samples_per_shard)
    return root


@pytest.fixture(scope="session")
def local_ray():
    """A real local Ray cluster with 2 CPUs, shared by the tests that need one."""
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.init(num_cpus=2, logging_level="WARNING")  # dashboard on: Ray Train queries its state API
    yield ray
    ray.shutdown()
