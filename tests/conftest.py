"""Fixtures shared by all test packages: tiny shard sets, a real local Ray cluster, and the guard that
keeps Ray out of tests without the ray marker."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# ---------------------------------------------------------------------------------------------
# Two tiers: `pytest -m "not ray" tests` is the fast one and never starts Ray. A test that starts
# Ray (in this process, or in a subprocess such as jobs/train.py) must carry @pytest.mark.ray; an
# unmarked one that tries fails at once, naming the marker, instead of starting a cluster.

# Ray Train gives a worker group 60 s to start. Under `make test` the other xdist worker keeps
# both cores busy meanwhile, and a start that is slow for that reason is not what a test checks.
os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "240")

RAY_MISSING_MARK = "this test starts Ray: mark it with @pytest.mark.ray"
# What RAY_ADDRESS holds in an unmarked test, subprocesses included: with no ':' in it, ray.init
# refuses it at once ("Invalid address format: <this>"). An address where nothing listens is no
# good: ray.init retries its connection to it for minutes. Ray's job client also takes RAY_ADDRESS
# over the address it is given: test_submit.py's run_submit drops it for that reason.
NO_RAY_ADDRESS = "this test starts Ray; mark it with @pytest.mark.ray"
# Fixtures that start a Ray cluster themselves (test_submit.py's token_head runs `ray start --head`).
RAY_FIXTURES = ("local_ray", "token_head")


@pytest.hookimpl(wrapper=True)  # marks before xdist's own hook turns them into groups, checks after it
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (`make test` runs two workers), every Ray test goes to one worker, one
    after another: they share one local cluster (local_ray), and with two clusters side by side
    Ray's placement-group cleaner fails ("Found multiple active Ray instances") and a stopped
    trial's CPU is never freed. The other worker runs the rest meanwhile; the Ray tests spend most
    of their time waiting on Ray, not computing."""
    ray_tests = [item for item in items if item.get_closest_marker("ray") is not None]
    for item in ray_tests:
        item.add_marker(pytest.mark.xdist_group("ray"))
    result = yield
    if getattr(config.option, "loadgroup", False) and not all(item.nodeid.endswith("@ray") for item in ray_tests):
        raise pytest.UsageError("pytest-xdist did not group the Ray tests on one worker (--dist loadgroup); "
                                "this pytest/pytest-xdist pair does not support it (see pyproject.toml)")
    return result


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Session and module fixtures are set up before any function-scoped one: refuse an unmarked
    test that asks for a Ray cluster here, before the fixture would start (or reuse) one."""
    if item.get_closest_marker("ray") is None:
        wanted = [name for name in RAY_FIXTURES if name in getattr(item, "fixturenames", ())]
        if wanted:
            pytest.fail(f"{RAY_MISSING_MARK} (it uses the {wanted[0]} fixture)", pytrace=False)


@pytest.fixture(autouse=True)
def _no_ray_unless_marked(request, monkeypatch):
    """In a test without the ray marker: RAY_ADDRESS names no cluster (subprocesses inherit it,
    and ray.init honours it), and ray.init in this process fails with RAY_MISSING_MARK, also where
    a cluster started by an earlier marked test is still up (ray.is_initialized says no, so Ray's
    own auto-init and cluster.placement.init_ray both go through ray.init)."""
    if request.node.get_closest_marker("ray") is not None:
        yield
        return
    monkeypatch.setenv("RAY_ADDRESS", NO_RAY_ADDRESS)
    try:
        import ray  # the project imports it anyway; about half a second once per session
        import ray._private.worker as ray_worker
    except ImportError:
        ray = ray_worker = None

    def refuse(*args, **kwargs):
        pytest.fail(RAY_MISSING_MARK)

    if ray is not None:
        monkeypatch.setattr(ray, "init", refuse)
        monkeypatch.setattr(ray, "is_initialized", lambda: False)
        monkeypatch.setattr(ray_worker, "init", refuse, raising=False)
    yield


@pytest.fixture(autouse=True)
def one_thread_beside_ray(request, monkeypatch):
    """Tests without Ray run on one intra-op thread, their subprocesses too (OMP_NUM_THREADS).
    Under `make test` they share two cores with the Ray tests, whose workers would otherwise wait
    for cores that two-thread torch ops keep busy; and a tiny net's multithreaded ops each end at
    an OpenMP barrier, where a descheduled thread made the same steps 20 to 80 times slower. What
    a test compares runs in the same thread count on both sides."""
    if request.node.get_closest_marker("ray") is not None:
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def cfg():
    """The tiny preset, fresh for each test (tests change it): 16 px networks that step in milliseconds."""
    from cluster.config import load_config

    return load_config("tiny")


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
    """A real local Ray cluster with 2 CPUs, shared by the tests that need one (each marked
    @pytest.mark.ray). Started after the S3 server so its workers inherit the AWS_* environment
    that points at it."""
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
