"""jobs/submit.py --wait never waits without end: it follows the job for at most --timeout (48h by
default), then says so in one line and exits 4 while the job keeps running. No cluster here: the
job server is a stand-in."""
from __future__ import annotations

import importlib.util
import io
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import one_line_error

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("jobs_submit_cli", ROOT / "jobs" / "submit.py")
job = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(job)

ADDRESS = "http://127.0.0.1:8265"


class FakeServer:
    """A job server whose job writes two log lines, then ends with `status` once `release` is set
    (never, unless a test sets it)."""

    def __init__(self, release: threading.Event, status="SUCCEEDED", error: Exception | None = None):
        self.release, self.status, self.error = release, status, error

    def follow(self, job_id, out):
        out.write("step 1\n")
        out.write("step 2\n")
        if self.error is not None:
            raise self.error
        self.release.wait()
        return self.status


@pytest.fixture
def release():
    event = threading.Event()
    yield event
    event.set()  # lets a follower left behind by a test finish


@pytest.mark.timeout(60)  # reverted, the wait never ends: fail in a minute, not at the suite's 600 s
def test_a_job_that_never_ends_is_followed_only_until_the_timeout(release):
    out = io.StringIO()
    started = time.monotonic()
    assert job.follow_for(FakeServer(release), "job-1", out, 0.5) is None
    assert 0.5 <= time.monotonic() - started < 5
    assert out.getvalue() == "step 1\nstep 2\n"  # its logs until then were copied


def test_a_job_that_ends_gives_its_status_and_all_its_logs(release):
    release.set()
    out = io.StringIO()
    assert job.follow_for(FakeServer(release, "FAILED"), "job-1", out, 60) == "FAILED"
    assert out.getvalue() == "step 1\nstep 2\n"


def test_an_error_while_following_reaches_the_caller(release):
    with pytest.raises(RuntimeError, match="cannot reach"):
        job.follow_for(FakeServer(release, error=RuntimeError("cannot reach the job server")), "job-1",
                       io.StringIO(), 60)


@pytest.mark.timeout(60)  # reverted, the wait never ends: fail in a minute, not at the suite's 600 s
def test_wait_gives_up_after_the_timeout_in_one_line(release, monkeypatch, capsys):
    import cluster.submit

    class Server(FakeServer):
        def __init__(self, address, allow_insecure_http=False):
            super().__init__(release)

        def refuse_if_running(self, name):
            pass

        def submit(self, name, train_args, working_dir, now):
            return f"{name}-job"

        def ray_cli(self, verb, *args):
            return " ".join(["ray", "job", verb, "--address", ADDRESS, *args])

    monkeypatch.setattr(cluster.submit, "JobServer", Server)
    started = time.monotonic()
    rc = job.main(["--address", ADDRESS, "--name", "nightly", "--wait", "--timeout", "1s", "--",
                   "--storage", "/tmp/runs"])
    captured = capsys.readouterr()
    assert rc == 4 and time.monotonic() - started < 10
    assert "submitted job nightly-job: run nightly" in captured.out and "step 2" in captured.out
    err = captured.err.strip().splitlines()
    assert err == ["error: job nightly-job (run nightly) has not ended after 1s (--timeout); it keeps running: "
                   f"follow it with `ray job logs --address {ADDRESS} --follow nightly-job`, stop it with "
                   f"`ray job stop --address {ADDRESS} nightly-job`"], captured.err


@pytest.mark.parametrize("words, message", [
    (["--timeout", "2h"], "--timeout bounds --wait"),
    (["--wait", "--timeout", "0"], "not a duration > 0: '0'"),
    (["--wait", "--timeout", "soon"], "not a duration > 0: 'soon'"),
])
def test_timeout_mistakes_are_one_line(words, message, capsys):
    with pytest.raises(SystemExit) as e:
        job.parse_args(["--address", ADDRESS, *words, "--", "--storage", "/tmp/runs"])
    one_line_error(e.value.code, capsys.readouterr().err, message)


def test_wait_is_bounded_by_default():
    args = job.parse_args(["--address", ADDRESS, "--wait", "--", "--storage", "/tmp/runs"])
    assert args.timeout == 48 * 3600
    assert job.parse_args(["--address", ADDRESS, "--wait", "--timeout", "90m"]).timeout == 5400
