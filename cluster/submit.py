"""Scheduled runs: submit jobs/train.py to a running Ray cluster's job server (cron, CI schedules).

The run name comes from a strftime pattern expanded with the current UTC time, so one schedule
entry names one run per period; jobs/train.py resumes a run of the same name from its latest
checkpoint, so submitting that name again continues the run instead of starting it over. A run
is written by at most one job at a time: a name with a PENDING or RUNNING job is refused here,
as a convenience (it is list-then-submit, so two schedules firing at once can both pass); the
guard is the run lease the driver takes in the run folder (cluster/lease.py): of two drivers of
one run, the second stops at once.

Every failure a user can cause or fix (unreachable cluster, missing or wrong token, bad run name)
is raised as SubmitError with a one-line message; the token itself never appears in one.
"""
from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import secrets
import shlex
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Iterator, TextIO
from urllib.parse import urlsplit

import aiohttp
import requests
from ray.exceptions import AuthenticationError
from ray.job_submission import JobStatus, JobSubmissionClient

from comgan.errors import UserError

from .config import ConfigError, load_config

RUN_NAME_KEY = "run_name"           # job metadata key: which run a job trains
ACTIVE = (JobStatus.PENDING, JobStatus.RUNNING)
TOKEN_FILE = Path("~/.ray/auth_token")
NO_TOKEN = ("none found", "RAY_AUTH_MODE=disabled")   # token sources that mean none is sent


class SubmitError(UserError):
    """A mistake in the command or its environment, reported as one `error:` line."""


class RunBusy(SubmitError):
    """A job for this run is still pending or running: submitting another would mean two drivers."""


# ---------------------------------------------------------------------------------------------
# The run name and the entrypoint

def expand_run_name(pattern: str, now: datetime) -> str:
    """`nightly-%Y-%m-%d` -> `nightly-2026-01-31`, checked with jobs/train.py's own rule."""
    name = now.strftime(pattern)
    if not name:
        raise SubmitError(f"--name {pattern!r} expands to an empty run name")
    try:
        # The rule lives in cluster/config.py; checking a config that carries the name keeps one copy.
        load_config("default", [f"run.name={name}"])
    except ConfigError as e:
        raise SubmitError(f"--name {pattern!r} expands to {name!r}: {e}") from None
    return name


def check_train_args(train_args: list[str]) -> str | None:
    """Refuse a run name among the training arguments; return the run's storage if they give it."""
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    p.add_argument("--storage")
    p.add_argument("--name")
    try:
        known, rest = p.parse_known_args(train_args)
    except argparse.ArgumentError as e:
        raise SubmitError(f"training arguments: {e}") from None
    overrides = dict(a.split("=", 1) for a in rest if "=" in a and not a.startswith("-"))
    if known.name is not None or "run.name" in overrides:
        raise SubmitError("the run name comes from jobs/submit.py --name; remove --name / run.name=... "
                          "from the arguments after --")
    storage = known.storage if known.storage is not None else overrides.get("run.storage")
    # A job runs in its own copy of the working dir, under the cluster's session folder: a relative
    # storage would follow that copy, and a resubmission (new code, new session) would start over.
    if storage is not None and "://" not in storage and not os.path.isabs(storage):
        raise SubmitError(f"--storage {storage!r} is relative: on the cluster it would land inside the job's "
                          f"working-dir copy and a resubmission would not find the run; give an absolute "
                          f"path or a URL such as s3://bucket/runs")
    return storage


def train_command(train_args: list[str], name: str) -> str:
    return shlex.join(["python", "jobs/train.py", *train_args, "--name", name])


def submission_id(name: str, now: datetime) -> str:
    # The time says which submission it was; the suffix keeps two in the same second apart.
    return f"{name}-{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(2)}"


# ---------------------------------------------------------------------------------------------
# Talking to the job server

def find_auth_token() -> tuple[str | None, str]:
    """The cluster token and where it came from, looked up where Ray looks (RAY_AUTH_TOKEN,
    RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token). Ray's own client sends it only when RAY_AUTH_MODE=token
    is set on this machine too; a scheduled job should not need that, so we send it whenever one
    is found, as ray.init does when it connects (a cluster without token auth ignores it)."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return None, "RAY_AUTH_MODE=disabled"
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip(), "RAY_AUTH_TOKEN"
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        path, source = Path(os.environ["RAY_AUTH_TOKEN_PATH"]).expanduser(), "RAY_AUTH_TOKEN_PATH"
    else:
        path, source = TOKEN_FILE.expanduser(), str(TOKEN_FILE)
        if not path.exists():
            return None, "none found"
    try:
        token = path.read_text().strip()
    except OSError as e:
        raise SubmitError(f"cannot read the Ray auth token file {path} ({source}): {e.strerror}") from None
    if not token:
        raise SubmitError(f"the Ray auth token file {path} ({source}) is empty")
    return token, source


def is_loopback(host: str) -> bool:
    """Whether `host` is this machine by name or address (localhost, 127.0.0.0/8, ::1); names
    are not resolved: a name that happens to point here is treated as remote."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_address(address: str, allow_insecure_http: bool = False) -> None:
    """A job server URL the token may be sent to: https, or plain http to this machine (the SSH
    tunnel of `ray attach -p 8265` / `ray dashboard`). Plain http to another host would carry the
    bearer token, and the job, in clear text: only with `allow_insecure_http`. The scheme is
    required: Ray's client takes a bare host:port for a cluster's GCS address, and tries it for
    most of a minute before it fails with a traceback."""
    if "://" not in address:
        raise SubmitError(f"--address {address!r} needs http:// or https://: give http://{address} (the job "
                          f"server's URL, http://host:8265 with the dashboard port)")
    try:
        parts = urlsplit(address)
        host = parts.hostname or ""
    except ValueError:
        raise SubmitError(f"--address {address!r} is not a valid URL (e.g. http://127.0.0.1:8265)") from None
    if parts.scheme not in ("http", "https"):
        raise SubmitError(f"--address {address!r}: give the job server's URL, e.g. http://127.0.0.1:8265 "
                          f"(the dashboard port, not a ray:// client address)")
    if parts.scheme == "http" and not is_loopback(host) and not allow_insecure_http:
        raise SubmitError(f"--address {address!r} is plain http to another machine: the cluster's auth token "
                          f"would cross the network unencrypted; reach the head through an SSH tunnel "
                          f"(`ray dashboard ray_cluster.yaml`, then --address http://127.0.0.1:8265), use https, "
                          f"or pass --allow-insecure-http if this network is trusted")


@contextmanager
def job_server_errors(address: str, token_source: str) -> Iterator[None]:
    """Turn what the job client raises into one-line errors that say what to fix."""
    try:
        yield
    except AuthenticationError:
        if token_source == "RAY_AUTH_MODE=disabled":
            raise SubmitError(f"the Ray cluster at {address} requires an auth token, and RAY_AUTH_MODE=disabled "
                              f"here keeps it from being sent: unset RAY_AUTH_MODE") from None
        if token_source in NO_TOKEN:
            raise SubmitError(f"the Ray cluster at {address} requires an auth token and none was found: set "
                              f"RAY_AUTH_TOKEN, or RAY_AUTH_TOKEN_PATH, or put it in ~/.ray/auth_token "
                              f"(`ray get-auth-token` on the head prints it)") from None
        raise SubmitError(f"the Ray cluster at {address} rejected the auth token from {token_source}: "
                          f"it is not this cluster's token") from None
    except requests.exceptions.InvalidURL:
        raise SubmitError(f"--address {address!r} is not a valid URL (e.g. http://127.0.0.1:8265)") from None
    except (ConnectionError, requests.exceptions.RequestException):
        raise SubmitError(f"cannot reach the Ray job server at {address}: is the cluster up, and is that its "
                          f"dashboard address (default port 8265)?") from None
    except RuntimeError as e:  # the job server answered with an error status
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SubmitError(f"the Ray job server at {address} refused the request: {detail}") from None


class JobServer:
    """A cluster's job server, reached with the token found on this machine."""

    def __init__(self, address: str, allow_insecure_http: bool = False):
        check_address(address, allow_insecure_http)
        self.address = address
        token, self.token_source = find_auth_token()
        headers = {"Authorization": f"Bearer {token}"} if token else None
        with self.errors():
            self.client = JobSubmissionClient(address, headers=headers)

    def errors(self):
        return job_server_errors(self.address, self.token_source)

    def ray_cli(self, verb: str, *args: str) -> str:
        """The `ray job` command line that reaches this cluster: the ray CLI sends the token only
        with RAY_AUTH_MODE=token set."""
        auth = "" if self.token_source in NO_TOKEN else "RAY_AUTH_MODE=token "
        return auth + shlex.join(["ray", "job", verb, "--address", self.address, *args])

    def refuse_if_running(self, name: str) -> None:
        """Two drivers must never write one run: their checkpoints and artifacts would interleave.
        An early, friendly refusal only (racy: list, then submit); the driver's run lease is the guard."""
        with self.errors():
            jobs = self.client.list_jobs()
        for job in jobs:
            if (job.metadata or {}).get(RUN_NAME_KEY) == name and job.status in ACTIVE:
                raise RunBusy(f"run {name!r} is still being trained by job {job.submission_id} ({job.status}); "
                              f"not submitting a second one. Wait for it, or stop it: "
                              f"{self.ray_cli('stop', job.submission_id)}")

    def submit(self, name: str, train_args: list[str], working_dir: str, now: datetime) -> str:
        with self.errors():
            return self.client.submit_job(
                entrypoint=train_command(train_args, name),
                submission_id=submission_id(name, now),
                runtime_env={"working_dir": working_dir},
                metadata={RUN_NAME_KEY: name, "submitted_at": now.isoformat(timespec="seconds")},
            )

    def follow(self, job_id: str, out: TextIO) -> JobStatus:
        """Copy the job's logs to `out` until it ends; return its final status."""
        async def tail() -> None:
            async for chunk in self.client.tail_job_logs(job_id):
                out.write(chunk)
                out.flush()

        with self.errors():
            try:
                asyncio.run(tail())
            except (RuntimeError, aiohttp.ClientError):
                pass  # the log stream broke off (e.g. the dashboard restarted): the status decides
            while not (status := self.client.get_job_status(job_id)).is_terminal():
                time.sleep(2)
        return status
