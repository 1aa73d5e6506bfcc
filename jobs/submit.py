"""Submit a training run to a running Ray cluster, for scheduled use (cron, CI schedules).

    python jobs/submit.py --address http://<head>:8265 [--name PATTERN] [--wait] -- TRAIN_ARGS

Everything after -- goes to jobs/train.py unchanged; --name is a strftime pattern expanded with
the current UTC time, and the job runs `python jobs/train.py TRAIN_ARGS --name <expanded name>`.

A nightly run from cron (one run per day; a second submission the same day resumes it; cron
reads a bare % as a newline, hence \\%; cub.yaml holds the data, model and stage settings):
    0 2 * * * cd /srv/ds-comgan && .venv/bin/python jobs/submit.py --address http://head:8265 --name 'nightly-\\%Y-\\%m-\\%d' -- --config cub.yaml --storage s3://bucket/runs
From a CI schedule, following the logs and failing the pipeline when the run fails:
    python jobs/submit.py --address http://head:8265 --wait --name 'weekly-%G-W%V' -- \\
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
stopped; 2 a mistake in the command, or the cluster is unreachable, or the token is missing or
wrong (one `error:` line); 3 the run already has a pending or running job, nothing submitted;
130 interrupted while waiting (the job keeps running).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from datetime import datetime, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

EXIT_JOB_FAILED, EXIT_USER_ERROR, EXIT_RUN_BUSY, EXIT_INTERRUPTED = 1, 2, 3, 130


class Parser(argparse.ArgumentParser):
    """Usage mistakes as one line, like every other error of this tool."""

    def error(self, message):
        print(f"error: {message} (training arguments go after --; see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def parse_args(argv=None) -> argparse.Namespace:
    p = Parser(prog="jobs/submit.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    p.add_argument("--working-dir", default=ROOT, metavar="DIR",
                   help="code uploaded for the job, files ignored by .gitignore left out "
                        "(default: this checkout, %(default)s)")
    return p.parse_args(argv)


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
    if check_train_args(args.train_args) is None:
        print("warning: no --storage among the training arguments: the run goes to the config's run.storage, "
              "which must be a URL or an absolute path for a resubmission to resume it", file=sys.stderr)
    server = JobServer(args.address)
    server.refuse_if_running(name)
    job_id = server.submit(name, args.train_args, args.working_dir, now)
    print(f"submitted job {job_id}: run {name} on {args.address}", flush=True)
    if not args.wait:
        print(f"follow it:  {server.ray_cli('logs', '--follow', job_id)}")
        print(f"stop it:    {server.ray_cli('stop', job_id)}")
        return 0
    status = server.follow(job_id, sys.stdout)
    print(f"job {job_id} (run {name}) {status.value}", flush=True)
    return 0 if status == JobStatus.SUCCEEDED else EXIT_JOB_FAILED


def main(argv=None) -> int:
    args = parse_args(argv)
    from cluster.submit import RunBusy, SubmitError  # imports ray: keep --help and usage errors fast
    quiet_ray_client_logs()
    try:
        return submit(args)
    except RunBusy as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_RUN_BUSY
    except SubmitError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted: the job keeps running on the cluster (`ray job stop` stops it)", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
