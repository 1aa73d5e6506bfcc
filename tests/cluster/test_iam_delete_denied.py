"""Issue 27 point 14: an AccessDenied on delete leaves no half-moved run folder."""
import uuid

import fsspec.implementations.memory as memory
import pytest

from cluster.config import load_config
from cluster.pipeline import ATTEMPT_FILE, set_attempt_aside
from cluster.storage import RunLayout
from data_shards.io import StorageError, join_url, list_tree, url_exists, write_bytes


def test_a_denied_delete_leaves_the_run_whole_and_the_move_to_be_redone(monkeypatch):
    """Issue 27 point 14: without s3:DeleteObject, setting a collapsed attempt aside (copy, then
    delete) stops with one line; the run's stage1 folder is whole and no attempt record says the
    move was done, so a re-run (with the permission) redoes it."""
    layout = RunLayout(f"memory://iam-{uuid.uuid4().hex}/runs", "run")
    for name in ("checkpoint_1/state.pt", "checkpoint_2/state.pt", "generator.pt"):
        write_bytes(join_url(layout.stage_dir("stage1"), name), b"x")
    before = list_tree(layout.stage_dir("stage1"))

    def denied(self, path, recursive=False, maxdepth=None):
        raise PermissionError(f"AccessDenied: s3:DeleteObject on {path}")

    monkeypatch.setattr(memory.MemoryFileSystem, "rm", denied)
    with pytest.raises(StorageError) as e:
        set_attempt_aside(layout, 1, {"reason": "collapsed"})
    assert "\n" not in str(e.value) and "access denied" in str(e.value)
    assert list_tree(layout.stage_dir("stage1")) == before
    assert not url_exists(join_url(layout.collapsed(1), ATTEMPT_FILE))
