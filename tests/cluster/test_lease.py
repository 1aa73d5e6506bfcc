"""The run lease (cluster/lease.py): one driver per run folder, on a local folder and on memory://."""
from __future__ import annotations

import json
import os
import socket
import time
import uuid

import pytest

from cluster import lease
from cluster.lease import RunLeased, acquire, lease_url, read_lease
from data_shards.io import url_exists, write_bytes
from tests.helpers import tiny_data


@pytest.fixture(params=["local", "memory"])
def run_root(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "runs" / "nightly")
    return f"memory://lease-tests-{uuid.uuid4().hex}/runs/nightly"


def other_driver(run_root: str, heartbeat: float, host: str = "build-3", pid: int = 4242) -> dict:
    record = {"owner": "someone-else", "host": host, "pid": pid, "started": heartbeat - 60, "heartbeat": heartbeat}
    write_bytes(lease_url(run_root), json.dumps(record).encode())
    return record


def test_a_second_acquire_fails_naming_the_holder(run_root):
    first = acquire(run_root, settle=0)
    try:
        with pytest.raises(RunLeased) as e:
            acquire(run_root, settle=0)
        message = str(e.value)
        assert "\n" not in message
        assert f"host {socket.gethostname()}, pid {os.getpid()}, since " in message
        assert "UTC" in message and "another driver" in message and "--name" in message
        assert read_lease(lease_url(run_root))["owner"] == first.owner, "the loser leaves the lease alone"
    finally:
        first.release()


def test_a_live_lease_of_another_host_is_refused(run_root):
    other_driver(run_root, heartbeat=time.time() - 10)
    with pytest.raises(RunLeased, match=r"host build-3, pid 4242, since .* UTC \(last heartbeat 1\d s ago\)"):
        acquire(run_root, settle=0)


def test_a_stale_lease_is_taken_over_with_a_warning(run_root):
    other_driver(run_root, heartbeat=time.time() - lease.STALE_AFTER_SECONDS - 5)
    warnings = []
    taken = acquire(run_root, settle=0, say=warnings.append)
    assert read_lease(lease_url(run_root))["owner"] == taken.owner
    assert len(warnings) == 1 and "taking over the stale lease" in warnings[0] and "build-3" in warnings[0]
    taken.release()


def test_a_dead_driver_of_this_host_does_not_block_until_its_lease_ages(run_root):
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    other_driver(run_root, heartbeat=time.time(), host=socket.gethostname(), pid=int(gone.stdout))
    warnings = []
    acquire(run_root, settle=0, say=warnings.append).release()
    assert warnings and "taking over" in warnings[0]


def test_an_unreadable_lease_counts_as_stale(run_root):
    write_bytes(lease_url(run_root), b"{torn")
    acquire(run_root, settle=0, say=lambda _: None).release()


def test_the_last_writer_wins_and_the_other_driver_stops(run_root, monkeypatch):
    """Two drivers that both found no lease both write one; after the wait, the one whose write
    was overwritten stops (object stores have no atomic create-if-absent)."""
    def rival_writes_meanwhile(_seconds):
        other_driver(run_root, heartbeat=time.time())

    monkeypatch.setattr(lease.time, "sleep", rival_writes_meanwhile)
    with pytest.raises(RunLeased, match="at the same moment .*host build-3, pid 4242"):
        acquire(run_root, settle=1)


def test_release_removes_the_lease_and_the_run_can_be_taken_again(run_root):
    with acquire(run_root, settle=0):
        assert url_exists(lease_url(run_root))
    assert not url_exists(lease_url(run_root))
    acquire(run_root, settle=0).release()


def test_release_on_an_error_and_never_removes_another_drivers_lease(run_root):
    with pytest.raises(KeyboardInterrupt):
        with acquire(run_root, settle=0):
            raise KeyboardInterrupt
    assert not url_exists(lease_url(run_root))

    mine = acquire(run_root, settle=0)
    theirs = other_driver(run_root, heartbeat=time.time())  # took it over while this one was paused
    mine.release()
    assert read_lease(lease_url(run_root)) == theirs


def test_the_heartbeat_renews_the_lease(run_root):
    held = acquire(run_root, settle=0, heartbeat_seconds=0.05)
    first = read_lease(lease_url(run_root))["heartbeat"]
    with held:
        deadline = time.time() + 10
        while read_lease(lease_url(run_root))["heartbeat"] == first and time.time() < deadline:
            time.sleep(0.02)
        renewed = read_lease(lease_url(run_root))
    assert renewed["heartbeat"] > first and renewed["owner"] == held.owner
    assert renewed["started"] == held.record["started"], "renewal keeps the start time"


def test_a_lease_taken_over_is_lost_and_the_driver_stops_at_its_next_check(run_root):
    warnings = []
    held = acquire(run_root, settle=0, say=warnings.append)
    other_driver(run_root, heartbeat=time.time())
    assert held.renew() is False
    assert "taken over by another driver" in warnings[0]
    with pytest.raises(RunLeased, match="another driver took this run over"):
        held.check()
    assert read_lease(lease_url(run_root))["owner"] == "someone-else", "a lost lease is not written over"


def test_a_second_driver_of_the_same_run_stops_before_writing_anything(tiny_shards, tmp_path):
    """run_pipeline (what jobs/train.py runs) takes the lease before it writes into the run
    folder: with another driver's live lease there, it stops without config.yaml or Ray."""
    from cluster.config import load_config
    from cluster.pipeline import run_pipeline

    cfg = load_config("tiny", [*tiny_data(tiny_shards, held_out=False), f"run.storage={tmp_path}", "run.name=twice"])
    other_driver(str(tmp_path / "twice"), heartbeat=time.time() - 3)
    with pytest.raises(RunLeased, match="run .*twice is being trained by another driver: host build-3, pid 4242"):
        run_pipeline(cfg)
    assert sorted(os.listdir(tmp_path / "twice")) == [lease.LEASE_FILE]
