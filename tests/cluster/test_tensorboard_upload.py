"""Issue 27 point 8: a TensorBoard upload that fails (S3 at a checkpoint) never reaches training:
no exception, one warning, the next flush uploads again. No S3 server: the filesystem is a fake."""
from __future__ import annotations

import logging
import os
import shutil

import pytest

import cluster.tensorboard as tensorboard


class FlakyStore:
    """A remote filesystem whose first `failures` uploads raise OSError; the rest copy the folder."""

    def __init__(self, target, failures: int):
        self.target, self.failures, self.calls, self.uploaded = target, failures, 0, []

    def put(self, local, path, recursive=False):
        self.calls += 1
        if self.calls <= self.failures:
            raise OSError(f"Unable to upload {path}: SlowDown, please reduce your request rate")
        self.uploaded.append(sorted(os.listdir(local)))


@pytest.fixture
def store(monkeypatch, tmp_path):
    def make(failures):
        fake = FlakyStore(tmp_path, failures)
        monkeypatch.setattr(tensorboard, "filesystem", lambda url: (fake, url.split("://", 1)[1]))
        return fake
    return make


def warnings_of(caplog):
    return [r for r in caplog.records if r.levelno >= logging.WARNING and r.name == "comgan.tensorboard"]


def test_a_failed_upload_warns_once_and_the_next_flush_retries(store, caplog):
    fake = store(failures=1)
    writer = tensorboard.RunWriter("s3://bucket/run/tensorboard/stage1")
    with caplog.at_level(logging.INFO, logger="comgan.tensorboard"):
        writer.scalars({"loss/d": 1.0}, 1)
        writer.flush()  # at a checkpoint: the upload fails, training must not
        assert writer.upload_failing and len(warnings_of(caplog)) == 1
        assert "training goes on" in warnings_of(caplog)[0].getMessage()
        writer.scalars({"loss/d": 0.5}, 2)
        writer.flush()  # retried, and it gets through
        assert not writer.upload_failing and fake.calls == 2 and fake.uploaded
        writer.close()
    assert len(warnings_of(caplog)) == 1
    assert not os.path.exists(writer.local), "uploaded: the temporary folder is gone"


def test_an_upload_that_always_fails_never_raises_and_keeps_the_files(store, caplog):
    fake = store(failures=10**9)
    writer = tensorboard.RunWriter("s3://bucket/run/tensorboard/stage1")
    with caplog.at_level(logging.WARNING, logger="comgan.tensorboard"):
        for step in range(1, 4):
            writer.scalars({"loss/d": 1.0 / step}, step)
            writer.flush()
        writer.close()
    assert fake.calls == 4 and not fake.uploaded
    messages = [r.getMessage() for r in warnings_of(caplog)]
    assert len(messages) == 2, messages  # the failure once, and where the files are kept at close
    assert writer.local in messages[1] and os.listdir(writer.local), "the only copy is not deleted"
    shutil.rmtree(writer.local)
