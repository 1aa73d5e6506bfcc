"""jobs/submit.py (scheduled runs) against a real Ray head with token authentication.

The head is started once for this module with `ray start --head --block` in a session of its own:
token auth on (RAY_AUTH_MODE=token, a generated token passed through the environment, HOME at an
empty folder so nothing reads or writes the real ~/.ray), every port it opens chosen free, its own
temp dir (so a `ray.init()` elsewhere on the machine never finds it). Teardown ends exactly this
head's processes and checks none is left.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tests.helpers import ROOT, one_line_error, run_script, tiny_data

VENV_BIN = Path(sys.executable).parent
HEAD_PORTS = ("port", "dashboard-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
              "runtime-env-agent-port", "metrics-export-port", "node-manager-port", "object-manager-port",
              "ray-client-server-port")
CLIENT_ENV_DROPPED = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout: float, what: str, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


# ---------------------------------------------------------------------------------------------
# The token-auth head

@dataclass
class Head:
    address: str
    token: str
    home: Path          # an empty HOME: no ~/.ray/auth_token for clients to fall back on

    def env(self, **changes: str | None) -> dict:
        """A client's environment: the token in RAY_AUTH_TOKEN unless `changes` say otherwise."""
        env = {k: v for k, v in os.environ.items() if k not in CLIENT_ENV_DROPPED}
        env.update(HOME=str(self.home), RAY_AUTH_TOKEN=self.token)
        for key, value in changes.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        return env

    def client(self):
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.address, headers={"Authorization": f"Bearer {self.token}"})


def head_processes(session: int, temp_dir: str) -> list[int]:
    """Live processes of this head: its session (ray start, GCS, raylet, dashboard, workers), and
    the job drivers, which Ray starts in sessions of their own inside the head's temp dir."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            state, _ppid, _pgrp, sid = stat[stat.rindex(")") + 2:].split()[:4]
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except OSError:
            continue  # gone meanwhile, or not ours to inspect
        if state != "Z" and (int(sid) == session or (cwd + os.sep).startswith(temp_dir + os.sep)):
            found.append(int(entry))
    return found


def stop_head(proc: subprocess.Popen, temp_dir: str) -> list[int]:
    """SIGTERM every process of this head, SIGKILL what is left; returns any survivors."""
    for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
        for pid in head_processes(proc.pid, temp_dir):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        try:
            proc.wait(timeout=5)  # reap `ray start` itself, or it lingers as a zombie
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + grace
        while head_processes(proc.pid, temp_dir) and time.monotonic() < deadline:
            time.sleep(0.2)
    return head_processes(proc.pid, temp_dir)


def head_ready(head: Head, proc: subprocess.Popen, log: Path) -> bool:
    if proc.poll() is not None:
        pytest.fail(f"ray start exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
    try:
        head.client().list_jobs()  # the job server answers, with auth
        return True
    except Exception:
        return False


@pytest.fixture(scope="module")
def token_head(tmp_path_factory):
    root = tmp_path_factory.mktemp("token_head")
    home = root / "home"
    home.mkdir()
    # Short: Ray's unix sockets live under it and socket paths are limited to ~107 bytes.
    temp_dir = tempfile.mkdtemp(prefix="ray-head-", dir="/tmp")
    token = secrets.token_hex(32)
    ports = {name: free_port() for name in HEAD_PORTS}
    env = {k: v for k, v in os.environ.items() if k not in CLIENT_ENV_DROPPED}
    # Jobs run `python jobs/train.py`: the `python` on the head's PATH must be this environment's.
    env.update(PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", HOME=str(home),
               RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_USAGE_STATS_ENABLED="0")
    cmd = [str(VENV_BIN / "ray"), "start", "--head", "--block", "--num-cpus=2", "--disable-usage-stats",
           "--dashboard-host=127.0.0.1", "--include-dashboard=true", f"--temp-dir={temp_dir}",
           "--object-store-memory=300000000", *(f"--{name}={port}" for name, port in ports.items())]
    log = root / "ray_start.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    head = Head(address=f"http://127.0.0.1:{ports['dashboard-port']}", token=token, home=home)
    try:
        wait_for(lambda: head_ready(head, proc, log), 120, "the head's job server")
        yield head
    finally:
        survivors = stop_head(proc, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not survivors, f"processes of the test's Ray head still alive: {survivors}"


# ---------------------------------------------------------------------------------------------
# Helpers

def run_submit(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    if env is None:  # Ray's job client takes RAY_ADDRESS over --address: these tests give --address
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return run_script("jobs/submit.py", *args, env=env, timeout=timeout)


def tiny_args(shards: Path, runs: Path, *overrides: str) -> list[str]:
    return ["--config", "tiny", *tiny_data(shards), *overrides, "--storage", str(runs)]


def utc_names(pattern: str, started: datetime) -> set[str]:
    """The names `pattern` may have expanded to between `started` and now."""
    return {started.strftime(pattern), datetime.now(timezone.utc).strftime(pattern)}


def submitted(p: subprocess.CompletedProcess) -> tuple[str, str]:
    """(job id, run name) from the tool's `submitted job ...` line."""
    m = re.search(r"^submitted job (\S+): run (\S+) on ", p.stdout, re.M)
    assert m, p.stdout + p.stderr
    return m.group(1), m.group(2)


# ---------------------------------------------------------------------------------------------
# Without a cluster

def test_help_documents_token_schedule_and_exit_codes():
    p = run_submit("--help")
    assert p.returncode == 0
    for words in ("--address", "--name", "--wait", "--working-dir", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH",
                  "~/.ray/auth_token", "0 2 * * *", "Exit codes", "resume"):
        assert words in p.stdout, words


@pytest.mark.parametrize("args, message", [
    (["--name", "runs/%Y"], "expands to 'runs/"),
    (["--name", "nightly %Y"], "expands to 'nightly "),
    (["--name", ".hidden-%Y"], "expands to '.hidden-"),
    (["--name", "x", "--", "--name", "y", "--storage", "/tmp/r"], "the run name comes from jobs/submit.py --name"),
    (["--name", "x", "--", "--storage", "runs"], "--storage 'runs' is relative"),
    (["--address", "ray://127.0.0.1:10001", "--name", "x", "--", "--storage", "/tmp/r"], "not a ray:// client"),
    (["--name", "x", "--config", "tiny"], "unrecognized arguments: --config"),
    (["--address", "http://10.0.0.5:8265", "--", "--storage", "/tmp/r"], "is plain http to another machine"),
    (["--address", "head.example:8265", "--", "--storage", "/tmp/r"], "give http://head.example:8265"),
    (["--address", "http://[::1", "--", "--storage", "/tmp/r"], "is not a valid URL"),
])
def test_mistakes_in_the_command_are_one_line(args, message):
    address = [] if "--address" in args else ["--address", "http://127.0.0.1:9"]
    p = run_submit(*address, *args)
    one_line_error(p.returncode, p.stderr, message)


def test_unreachable_cluster_is_one_line():
    address = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    p = run_submit("--address", address, "--", "--storage", "/tmp/r")
    one_line_error(p.returncode, p.stderr, f"cannot reach the Ray job server at {address}")
    assert time.monotonic() - started < 30


def test_an_address_without_http_is_one_line_at_once():
    """Ray's job client takes a bare host:port for a cluster's GCS address and retries it for
    most of a minute, then fails with a traceback: the scheme is required instead."""
    started = time.monotonic()
    p = run_submit("--address", "127.0.0.1:9")  # the review's command: no other line (no --storage warning)
    one_line_error(p.returncode, p.stderr, "--address '127.0.0.1:9'", "http:// or https://", "http://127.0.0.1:9")
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("address", ["http://127.0.0.1:8265", "http://localhost:8265",
                                     "http://127.0.0.2:8265", "http://[::1]:8265", "https://head.example:8265",
                                     "https://10.0.0.5:8265"])
def test_loopback_or_https_addresses_are_accepted(address):
    from cluster.submit import check_address

    check_address(address)


@pytest.mark.parametrize("address", ["http://10.0.0.5:8265", "http://head.example:8265",
                                     "http://127.0.0.1.example:8265"])
def test_plain_http_to_another_host_needs_the_explicit_flag(address, monkeypatch):
    from cluster import submit
    from cluster.submit import SubmitError, check_address

    with pytest.raises(SubmitError, match="plain http to another machine.*--allow-insecure-http"):
        check_address(address)
    check_address(address, allow_insecure_http=True)
    # Refused before any client exists: the token never leaves this machine.
    monkeypatch.setenv("RAY_AUTH_TOKEN", "token-that-must-stay-here")
    monkeypatch.setattr(submit, "JobSubmissionClient", lambda *a, **k: pytest.fail("a request was made"))
    with pytest.raises(SubmitError) as refused:
        submit.JobServer(address)
    assert "token-that-must-stay-here" not in str(refused.value)


def test_the_insecure_flag_reaches_the_job_server(monkeypatch):
    import jobs.submit as tool
    from cluster import submit

    seen = {}

    class Server:
        def __init__(self, address, allow_insecure_http=False):
            seen.update(address=address, allow=allow_insecure_http)
            raise submit.SubmitError("stop here")

    monkeypatch.setattr(submit, "JobServer", Server)
    args = ["--address", "http://10.0.0.5:8265", "--allow-insecure-http", "--", "--storage", "/tmp/r"]
    assert tool.main(args) == 2
    assert seen == {"address": "http://10.0.0.5:8265", "allow": True}


def test_run_name_expands_in_utc():
    from cluster.submit import expand_run_name

    now = datetime(2026, 1, 31, 23, 59, tzinfo=timezone.utc)
    assert expand_run_name("nightly-%Y-%m-%d", now) == "nightly-2026-01-31"
    assert expand_run_name("weekly-%G-W%V", now) == "weekly-2026-W05"
    assert expand_run_name("fixed", now) == "fixed"


def test_token_lookup_follows_rays_order(tmp_path, monkeypatch):
    from cluster.submit import find_auth_token

    for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert find_auth_token() == (None, "none found")
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-home\n")
    assert find_auth_token() == ("from-home", "~/.ray/auth_token")
    (tmp_path / "tok").write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "tok"))
    assert find_auth_token() == ("from-path", "RAY_AUTH_TOKEN_PATH")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert find_auth_token() == ("from-env", "RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert find_auth_token() == (None, "RAY_AUTH_MODE=disabled")


# ---------------------------------------------------------------------------------------------
# Against the token-auth head

@pytest.mark.ray
@pytest.mark.parametrize("token_env, message", [
    ({"RAY_AUTH_TOKEN": "not-the-cluster-token-0123"}, "rejected the auth token from RAY_AUTH_TOKEN"),
    ({"RAY_AUTH_TOKEN": None}, "requires an auth token and none was found"),
])
def test_wrong_or_missing_token_is_one_line(token_head, token_env, message):
    p = run_submit("--address", token_head.address, "--", "--storage", "/tmp/r", env=token_head.env(**token_env))
    one_line_error(p.returncode, p.stderr, message)
    assert "not-the-cluster-token-0123" not in p.stdout + p.stderr


@pytest.mark.ray
def test_plain_ray_job_submit_trains_against_token_auth(token_head, tiny_shards, tmp_path):
    """The documented `ray job submit` path: the ray CLI needs RAY_AUTH_MODE=token to send the token."""
    cmd = [str(VENV_BIN / "ray"), "job", "submit", "--address", token_head.address, "--working-dir", str(ROOT),
           "--", "python", "jobs/train.py", *tiny_args(tiny_shards, tmp_path), "--name", "x"]
    p = subprocess.run(cmd, cwd=ROOT, env=token_head.env(RAY_AUTH_MODE="token"), capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    results = json.loads((tmp_path / "x" / "eval.json").read_text())
    assert 0 <= results["segmenter"]["iou_strict"] <= 1


@pytest.mark.ray
def test_wait_follows_the_job_and_names_the_run_by_date(token_head, tmp_path):
    started = datetime.now(timezone.utc)
    p = run_submit("--address", token_head.address, "--wait", "--name", "ci-%Y-%m-%d", "--",
                   "--config", "tiny", "--storage", str(tmp_path), "--print-config", env=token_head.env())
    assert p.returncode == 0, p.stdout + p.stderr
    job_id, name = submitted(p)
    assert name in utc_names("ci-%Y-%m-%d", started)
    assert job_id.startswith(f"{name}-")
    assert re.search(rf"^\s+name: {name}$", p.stdout, re.M), "the job's logs (the resolved config) are followed"
    assert p.stdout.rstrip().endswith(f"job {job_id} (run {name}) SUCCEEDED")
    assert token_head.token not in p.stdout + p.stderr
    (job,) = [j for j in token_head.client().list_jobs() if j.submission_id == job_id]
    assert job.metadata["run_name"] == name


@pytest.mark.ray
def test_wait_exits_nonzero_when_the_job_fails(token_head, tmp_path):
    p = run_submit("--address", token_head.address, "--wait", "--name", "broken", "--",
                   "--config", "no-such-preset", "--storage", str(tmp_path), env=token_head.env())
    assert p.returncode == 1, p.stdout + p.stderr
    assert "error: unknown config 'no-such-preset'" in p.stdout  # jobs/train.py's own line, from the job's logs
    assert p.stdout.rstrip().endswith("FAILED")


@pytest.mark.ray
def test_resubmitting_a_stopped_run_resumes_it(token_head, tiny_shards, tmp_path):
    from ray.job_submission import JobStatus

    # Stage 1 only, long enough (100 short steps) that the stop lands before it ends.
    args = ["--stage1-only", *tiny_args(tiny_shards, tmp_path, "stage1.steps=100", "run.checkpoint_every=3",
                                        "run.log_every=1")]
    started = datetime.now(timezone.utc)
    first = run_submit("--address", token_head.address, "--name", "resume-%Y-%m-%d", "--", *args,
                       env=token_head.env())
    assert first.returncode == 0, first.stdout + first.stderr
    job_id, name = submitted(first)
    assert name in utc_names("resume-%Y-%m-%d", started)
    assert f"RAY_AUTH_MODE=token ray job logs --address {token_head.address} --follow {job_id}" in first.stdout

    stage1 = tmp_path / name / "stage1"
    # Ray Train registers a checkpoint in this snapshot once it is completely written.
    wait_for(lambda: (stage1 / "checkpoint_manager_snapshot.json").exists(), 180, "the first stage-1 checkpoint")

    busy = run_submit("--address", token_head.address, "--name", name, "--", *args, env=token_head.env())
    one_line_error(busy.returncode, busy.stderr, f"run {name!r} is still being trained by job {job_id}", expected=3)

    client = token_head.client()
    client.stop_job(job_id)
    wait_for(lambda: client.get_job_status(job_id) == JobStatus.STOPPED, 60, "the job to stop")
    assert not (stage1 / "generator.pt").exists(), "stage 1 finished before the stop: nothing left to resume"

    # The token from a file this time (RAY_AUTH_TOKEN_PATH), as a cron machine might keep it.
    token_file = tmp_path / "token"
    token_file.write_text(token_head.token)
    again = run_submit("--address", token_head.address, "--wait", "--name", name, "--", *args,
                       env=token_head.env(RAY_AUTH_TOKEN=None, RAY_AUTH_TOKEN_PATH=str(token_file)), timeout=300)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    stage1_summary = json.loads((tmp_path / name / "summary.json").read_text())["stage1"]
    assert stage1_summary["resumed_from"] >= 3, "the resubmitted job continues from a checkpoint"
    assert stage1_summary["step"] == 100 and (stage1 / "generator.pt").exists()
