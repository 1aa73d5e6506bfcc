"""Submit a training run to a running Ray cluster, for scheduled use (cron, CI schedules).

    python jobs/submit.py --address http://127.0.0.1:8265 [--name PATTERN] [--wait] -- TRAIN_ARGS

Everything after -- goes to jobs/train.py unchanged; --name is a strftime pattern expanded with
the current UTC time, and the job runs `python jobs/train.py TRAIN_ARGS --name <expanded name>`.

The job server is reached through an SSH tunnel to the head (`ray dashboard ray_cluster.yaml`,
or `ssh -N -L 8265:127.0.0.1:8265 ubuntu@<head>`), so --address is http://127.0.0.1:8265; plain
http to another host is refused (the token would cross the network in clear text) unless
--allow-insecure-http is given; https is accepted anywhere.

A nightly run from cron (one run per day; a second submission the same day resumes it; cron
reads a bare % as a newline, hence \\%; cub.yaml holds the data, model and stage settings):
    0 2 * * * cd /srv/ds-comgan && .venv/bin/python jobs/submit.py --address http://127.0.0.1:8265 --name 'nightly-\\%Y-\\%m-\\%d' -- --config cub.yaml --storage s3://bucket/runs
From a CI schedule, following the logs and failing the pipeline when the run fails:
    python jobs/submit.py --address http://127.0.0.1:8265 --wait --name 'weekly-%G-W%V' -- \\
        --config tiny --storage s3://bucket/ci-runs

Resume: jobs/train.py continues a run of the same name from its latest checkpoint (finished
stages are kept), so resubmitting a name that was stopped or failed picks it up where it was.
A run that still has a PENDING or RUNNING job is not submitted again (two drivers would write
one run): the tool says which job holds it and exits with 3. Give --storage as a URL or an
absolute path: a relative one lands in the job's private copy of the working dir.

Auth token (Ray token authentication): read the way Ray reads it, first found wins:
RAY_AUTH_TOKEN, the file named by RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token (`ray get-auth-token`
on the head prints the cluster's token). It is sent whenever one is found, also without
RAY_AUTH_MODE=token (which Ray's own CLI needs); RAY_AUTH_MODE=disabled sends none. The token
is never printed.

Exit codes: 0 submitted (with --wait: the job succeeded); 1 with --wait, the job failed or was
stopped; 2 a mistake in the command (plain http to another host included), or the cluster is
unreachable, or the token is missing or wrong (one `error:` line); 3 the run already has a
pending or running job, nothing submitted; 4 with --wait, the job had not ended after --timeout
(default 48h; the job keeps running); 130 interrupted while waiting (the job keeps running).
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import queue
import re
import sys
import threading
import time
from datetime import datetime, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cluster.cli import EXIT_INTERRUPTED, EXIT_USER_ERROR, OneLineParser, print_error  # noqa: E402
from comgan.errors import UserError  # noqa: E402

EXIT_JOB_FAILED, EXIT_RUN_BUSY, EXIT_WAIT_TIMEOUT = 1, 3, 4
WAIT_TIMEOUT = "48h"    # --wait gives up after this unless --timeout says otherwise
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> float:
    """Seconds in `text`: 45, 30s, 90m, 12h or 2d; more than 0."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)\s*", text.lower())
    value = float(m.group(1)) * UNITS[m.group(2) or "s"] if m else math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"not a duration > 0: {text!r} (e.g. 3600, 90m, 12h, 2d)")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    p = OneLineParser(prog="jobs/submit.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                      hint="training arguments go after --")
    p.add_argument("train_args", nargs="*", metavar="TRAIN_ARGS",
                   help="after --: arguments for jobs/train.py (config, overrides, --storage, --workers)")
    p.add_argument("--address", default=os.environ.get("RAY_API_SERVER_ADDRESS"),
                   required="RAY_API_SERVER_ADDRESS" not in os.environ,
                   help="the cluster's job server (dashboard) URL, e.g. http://127.0.0.1:8265 "
                        "(default: $RAY_API_SERVER_ADDRESS)")
    p.add_argument("--name", default="scheduled-%Y-%m-%d", metavar="PATTERN",
                   help="run name as a strftime pattern of the current UTC time; the same name resumes "
                        "the run (default: scheduled-%%Y-%%m-%%d, one run per day)")
    p.add_argument("--wait", action="store_true",
                   help="follow the job's logs until it ends; exit 0 only if it succeeded")
    p.add_argument("--timeout", type=duration, metavar="DURATION",
                   help=f"with --wait: give up following after this long, e.g. 90m, 12h, 2d (exit "
                        f"{EXIT_WAIT_TIMEOUT}; the job keeps running) (default: {WAIT_TIMEOUT})")
    p.add_argument("--allow-insecure-http", action="store_true",
                   help="send the job (and the auth token) over plain http to a host other than this machine; "
                        "without it such an --address is refused: use the SSH tunnel or https instead")
    p.add_argument("--working-dir", default=ROOT, metavar="DIR",
                   help="code uploaded for the job, files ignored by .gitignore left out "
                        "(default: this checkout, %(default)s)")
    args = p.parse_args(argv)
    if args.timeout is not None and not args.wait:
        p.error("--timeout bounds --wait: give both, or neither")
    if args.timeout is None:
        args.timeout = duration(WAIT_TIMEOUT)
    return args


class _Pipe:
    """A file the follower thread writes the job's logs into; the main thread copies them out."""

    def __init__(self):
        self.chunks: queue.Queue = queue.Queue()

    def write(self, text: str) -> None:
        self.chunks.put(text)

    def flush(self) -> None:
        pass


def follow_for(server, job_id: str, out, seconds: float):
    """The job's logs copied to `out` until it ends, then its final status (server.follow), for at
    most `seconds`: None when the job has not ended by then. The follower (HTTP requests and a log
    stream, which can hang when the head goes away) runs in a daemon thread that only reads and is
    left behind at the deadline; it never writes to `out` itself."""
    pipe, result = _Pipe(), {}

    def follow() -> None:
        try:
            result["status"] = server.follow(job_id, pipe)
        except BaseException as e:  # noqa: BLE001 -- handed to the main thread, raised there
            result["error"] = e

    thread = threading.Thread(target=follow, name=f"follow-{job_id}", daemon=True)
    thread.start()
    deadline = time.monotonic() + seconds
    while True:
        ended = not thread.is_alive()  # before draining: nothing written after this is lost
        try:
            while True:
                out.write(pipe.chunks.get_nowait())
        except queue.Empty:
            out.flush()
        if ended:
            break
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        thread.join(min(left, 0.2))
    if "error" in result:
        raise result["error"]
    return result["status"]


def _hms(seconds: float) -> str:
    for unit in ("d", "h", "m"):
        if seconds >= UNITS[unit] and seconds % UNITS[unit] == 0:
            return f"{seconds / UNITS[unit]:g}{unit}"
    return f"{seconds:g}s"


def quiet_ray_client_logs() -> None:
    """Ray's job client logs packaging and websocket details at INFO (its SDK modules set that level
    themselves); this tool reports what matters in its own lines."""
    for name in ("ray", "ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk"):
        logging.getLogger(name).setLevel(logging.ERROR)


def submit(args: argparse.Namespace) -> int:
    from cluster.submit import JobServer, check_train_args, expand_run_name  # imports ray
    from ray.job_submission import JobStatus

    now = datetime.now(timezone.utc)
    name = expand_run_name(args.name, now)
    storage = check_train_args(args.train_args)
    server = JobServer(args.address, allow_insecure_http=args.allow_insecure_http)  # a bad address: its line alone
    if storage is None:
        print("warning: no --storage among the training arguments: the run goes to the config's run.storage, "
              "which must be a URL or an absolute path for a resubmission to resume it", file=sys.stderr)
    server.refuse_if_running(name)
    job_id = server.submit(name, args.train_args, args.working_dir, now)
    print(f"submitted job {job_id}: run {name} on {args.address}", flush=True)
    if not args.wait:
        print(f"follow it:  {server.ray_cli('logs', '--follow', job_id)}")
        print(f"stop it:    {server.ray_cli('stop', job_id)}")
        return 0
    status = follow_for(server, job_id, sys.stdout, args.timeout)
    if status is None:
        print_error(f"job {job_id} (run {name}) has not ended after {_hms(args.timeout)} (--timeout); it keeps "
                    f"running: follow it with `{server.ray_cli('logs', '--follow', job_id)}`, stop it with "
                    f"`{server.ray_cli('stop', job_id)}`")
        return EXIT_WAIT_TIMEOUT
    print(f"job {job_id} (run {name}) {status.value}", flush=True)
    return 0 if status == JobStatus.SUCCEEDED else EXIT_JOB_FAILED


def main(argv=None) -> int:
    args = parse_args(argv)
    from cluster.submit import RunBusy  # imports ray: keep --help and usage errors fast
    quiet_ray_client_logs()
    try:
        return submit(args)
    except RunBusy as e:  # a user error with its own exit code
        print_error(e)
        return EXIT_RUN_BUSY
    except UserError as e:
        print_error(e)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted: the job keeps running on the cluster (`ray job stop` stops it)", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
