"""What the entry points (jobs/*.py) share: the run arguments, config resolution and how failures
reach the user: one `error:` line, never a traceback. A UserError (comgan/errors.py) exits 2.

Light to import (no torch, no ray): jobs/submit.py parses its arguments with it before it loads Ray."""
from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from comgan.errors import UserError
from data_shards.io import redact

if TYPE_CHECKING:
    from .config import Config

EXIT_USER_ERROR, EXIT_STAGE_FAILED, EXIT_INTERRUPTED = 2, 1, 130


def print_error(error: BaseException | str) -> None:
    """The one way a job reports a failure: `error: ` and the message's first line (or the error's
    type when it has none), with the credentials of any URL in it redacted."""
    lines = str(error).strip().splitlines() or [type(error).__name__]
    print(f"error: {redact(lines[0])}", file=sys.stderr, flush=True)


class OneLineParser(argparse.ArgumentParser):
    """Usage mistakes as one `error:` line (exit 2), like every other error of the jobs; `hint`, if
    given, goes into that line before the pointer to --help. Options are never abbreviated: a
    prefix (`--colour` for --colour-refine) would be taken silently, and a new option sharing it
    would change what an old command line means. Sub-command parsers are of this class too."""

    def __init__(self, *args, hint: str = "", **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self.hint = hint

    def error(self, message):
        print_error(f"{message} ({self.hint + '; ' if self.hint else ''}see {self.prog} --help)")
        sys.exit(EXIT_USER_ERROR)


def int_at_least(minimum: int, maximum: int | None = None):
    """An argparse type: an integer >= `minimum` (and <= `maximum`, if given), else a one-line
    usage error."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {text}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be <= {maximum}, got {text}")
        return value
    return parse


def add_run_arguments(p: argparse.ArgumentParser, default_name: str = "the config's name") -> None:
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, e.g. stage1.beta=0.5 stage2.lam=2 model.num_categories=10")
    p.add_argument("--config", default="default",
                   help="preset name (default, tiny, paper, photos) or path to a YAML file (default: %(default)s)")
    p.add_argument("--workers", type=int, help="number of Ray Train workers (data-parallel processes)")
    p.add_argument("--storage", help="where runs are kept: a folder or URL such as s3://bucket/runs (default: runs)")
    p.add_argument("--name", help=f"run name; the same name resumes that run (default: {default_name})")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def config_from_args(args: argparse.Namespace, extra: dict | None = None) -> Config:
    from .config import load_config  # imports torch (comgan.augment): keep this module light

    overrides = list(args.overrides)
    flags = {"run.workers": args.workers, "run.storage": args.storage, "run.name": args.name, **(extra or {})}
    overrides += [f"{key}={value}" for key, value in flags.items() if value is not None]
    return load_config(args.config, overrides)


def run_job(args: argparse.Namespace, extra: dict | None = None, default_name=None, stage1_only: bool = False) -> int:
    """Resolve the config, run the pipeline, turn every expected failure into one line + exit code."""
    try:
        cfg = config_from_args(args, extra)
        if default_name and not cfg.run.name:
            cfg.run.name = default_name(cfg)
        if args.print_config:
            print(cfg.to_yaml(), end="")
            return 0
        from .pipeline import StageFailed, run_pipeline  # imports ray: keep --help and config errors fast
        try:
            run_pipeline(cfg, stage1_only=stage1_only)
        except StageFailed as e:
            print_error(e)
            return EXIT_STAGE_FAILED
    except UserError as e:  # a worker's arrives as StageStopped (cluster/failures.py)
        print_error(e)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted: re-run the same command to resume from the latest checkpoint", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0
