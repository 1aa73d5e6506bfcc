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
    from cluster.config import load_config
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
def local_ray(s3_server):
    """A real local Ray cluster with 2 CPUs, shared by the tests that need one. Started after the S3
    server so its workers inherit the AWS_* environment that points at it."""
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.init(num_cpus=2, logging_level="WARNING")  # dashboard on: Ray Train queries its state API
    yield ray
    ray.shutdown()


# ---------------------------------------------------------------------------------------------
# A real S3 server on loopback (moto's server mode), configured the way users configure AWS:
# through the standard environment, so s3fs, pyarrow and every Ray worker find it unchanged.

S3_SECRET = "moto-secret-must-never-be-logged-0xC0FFEE"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """Endpoint URL of a moto S3 server on 127.0.0.1; sets the AWS_* environment for the session."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": S3_SECRET,
           "AWS_DEFAULT_REGION": "us-east-1",
           # newer botocore sends checksums that moto may reject
           "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
           "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required"}
    saved = {k: os.environ.get(k) for k in [*env, "AWS_PROFILE", "AWS_SESSION_TOKEN"]}
    os.environ.pop("AWS_PROFILE", None)
    os.environ.pop("AWS_SESSION_TOKEN", None)
    os.environ.update(env)
    yield endpoint
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_server, request):
    """A fresh, empty bucket for one test: returns "s3://<name>"."""
    import re

    import boto3

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:50].strip("-") + f"-{_free_port()}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    yield f"s3://{name}"
