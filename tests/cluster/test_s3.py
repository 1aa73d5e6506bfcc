"""The pipeline on object storage: a real S3 server (moto) on 127.0.0.1 holds the shards, the
checkpoints, the exported artifacts and the TensorBoard logs; storage mistakes fail before training."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import s3fs
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from comgan.artifacts import from_bytes, load_generator
from cluster.config import load_config
from conftest import S3_SECRET, _free_port
from data_shards.io import join_url, read_bytes, write_bytes
from tests.helpers import one_line_error, run_train


def tiny_on_s3(tiny_shards: Path, bucket: str) -> tuple[str, str]:
    """The tiny_shards sets copied to <bucket>/data/: the URLs of train and eval."""
    for path in tiny_shards.rglob("*"):
        if path.is_file():
            write_bytes(join_url(bucket, "data", *path.relative_to(tiny_shards).parts), path.read_bytes())
    return join_url(bucket, "data", "train"), join_url(bucket, "data", "eval")


@pytest.mark.ray
def test_pipeline_streams_from_and_stores_to_s3(local_ray, tiny_shards, s3_bucket, capfd):
    from cluster.pipeline import run_pipeline

    train, held_out = tiny_on_s3(tiny_shards, s3_bucket)
    fs = s3fs.S3FileSystem()
    damaged = join_url(train, "shard-000001.tar").removeprefix("s3://")
    fs.pipe_file(damaged, fs.cat_file(damaged)[:40000])  # cut off: the run must count it, not crash
    cfg = load_config("tiny", [f"data.train={train}", f"data.eval={held_out}", "data.synthetic=false",
                               "data.loader_workers=1", f"run.storage={s3_bucket}/runs", "run.name=s3run",
                               "run.workers=2"])
    summary = run_pipeline(cfg)
    for stage in ("stage1", "stage2"):
        assert summary[stage]["step"] == getattr(cfg, stage).steps
        assert summary[stage]["num_processes"] == 2 and summary[stage]["replicas_in_sync"] is True

    run = f"{s3_bucket.removeprefix('s3://')}/runs/s3run"
    checkpoints = sorted(e["name"] for e in fs.ls(f"{run}/stage1", detail=True) if e["type"] == "directory"
                         and e["name"].rsplit("/", 1)[-1].startswith("checkpoint_"))
    assert checkpoints, fs.ls(f"{run}/stage1")
    state = from_bytes(fs.cat_file(f"{checkpoints[-1]}/state.pt"), "checkpoint")
    assert state["kind"] == "comgan.stage1_checkpoint" and state["state"]["step"] == cfg.stage1.steps
    generator, _ = load_generator(from_bytes(read_bytes(f"s3://{run}/stage1/generator.pt")), cfg.model)
    assert json.loads(fs.cat_file(f"{run}/eval.json"))["num_images"] == cfg.data.synthetic_eval_size

    with tempfile.TemporaryDirectory() as local:
        fs.get(f"{run}/tensorboard/stage1/", local + "/", recursive=True)
        acc = EventAccumulator(local, size_guidance={"scalars": 0})
        acc.Reload()
        assert {"loss/D_z", "mask/mean", "data/undecodable_image"} <= set(acc.Tags()["scalars"])
        assert acc.Scalars("data/truncated_shard")[-1].value >= 1

    # The secret key reached every worker through the environment, and was written nowhere.
    everything = [p for p in fs.find(run)]
    assert any(p.endswith("config.yaml") for p in everything)
    for path in everything:
        assert S3_SECRET.encode() not in fs.cat_file(path), path
    out, err = capfd.readouterr()
    assert S3_SECRET not in out + err


def train_tiny(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return run_train("--config", "tiny", *args, env={**os.environ, **(env or {})})


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    one_line_error(proc.returncode, proc.stderr, *needles)
    assert "[stage1]" not in proc.stdout and "worker(s)" not in proc.stdout  # failed before any worker


def test_missing_bucket_and_missing_manifest_fail_before_training(s3_bucket, tiny_shards, tmp_path):
    proc = train_tiny("data.train=s3://no-such-bucket-here/train", "data.synthetic=false",
                      f"--storage={tmp_path}")
    assert_one_line_error(proc, "no-such-bucket-here", "does not exist")

    proc = train_tiny(f"data.train={s3_bucket}/empty-prefix", "data.synthetic=false", f"--storage={tmp_path}")
    assert_one_line_error(proc, f"{s3_bucket}/empty-prefix", "manifest.json")

    train, held_out = tiny_on_s3(tiny_shards, s3_bucket)
    proc = train_tiny(f"data.train={train}", f"data.eval={held_out}", "data.synthetic=false",
                      "--storage=s3://no-such-runs-bucket/runs")
    assert_one_line_error(proc, "no-such-runs-bucket", "does not exist")


def test_a_mistyped_bucket_path_is_not_filled_with_synthetic_images(s3_bucket, tmp_path):
    """The issue's case: data.synthetic on (the default), data.train a typo in the user's bucket."""
    proc = train_tiny(f"data.train={s3_bucket}/cub/trian", "data.eval=''", f"--storage={tmp_path}")
    assert_one_line_error(proc, f"data.train={s3_bucket}/cub/trian: nothing is there", "make_shards.py synthetic")
    assert s3fs.S3FileSystem().ls(s3_bucket.removeprefix("s3://"), refresh=True) == []


def test_unreachable_endpoint_fails_before_training(s3_server, tmp_path):
    closed = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    started = time.time()
    proc = train_tiny(f"storage.endpoint_url={closed}", "data.train=s3://bucket-x/train", "data.synthetic=false",
                      f"--storage={tmp_path}")
    assert_one_line_error(proc, "cannot reach", closed)
    assert time.time() - started < 90


@pytest.fixture
def s3_server_with_auth():
    """A second moto server that checks credentials (none are registered, so every key is wrong)."""
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    import urllib.request

    while True:
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=1)
            break
        except OSError:
            if time.time() > deadline or server.poll() is not None:
                server.kill()
                raise RuntimeError("moto server with authentication did not start")
            time.sleep(0.2)
    yield endpoint
    server.kill()
    server.wait()


def test_wrong_credentials_fail_before_training(s3_server, s3_server_with_auth, tmp_path):
    proc = train_tiny(f"storage.endpoint_url={s3_server_with_auth}", "data.train=s3://some-bucket/train",
                      "data.synthetic=false", f"--storage={tmp_path}",
                     env={"AWS_ACCESS_KEY_ID": "AKIAWRONGWRONGWRONG1", "AWS_SECRET_ACCESS_KEY": S3_SECRET})
    assert_one_line_error(proc, "access denied", "s3://some-bucket/train")
    assert S3_SECRET not in proc.stdout + proc.stderr
