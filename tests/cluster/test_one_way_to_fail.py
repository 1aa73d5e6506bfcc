"""One way to fail: every error that is the user's to fix derives from comgan.errors.UserError, and
what the jobs catch is that base, so a new kind of mistake raised anywhere in a job prints one
`error:` line (credentials redacted) and exits 2 without being added to any list."""
from __future__ import annotations

import ast
import builtins
import importlib
from pathlib import Path

import pytest

from comgan.errors import UserError
from tests.helpers import one_line_error

ROOT = Path(__file__).resolve().parents[2]

USER_MISTAKES = {
    "comgan.config": ["ConfigError"],
    "comgan.artifacts": ["ArtifactError"],
    "data_shards.index": ["DatasetError"],
    "data_shards.io": ["StorageError"],
    "data_shards.converters": ["ConversionError"],
    "data_shards.writer": ["ShardWriteError", "DestinationExists"],
    "cluster.lease": ["RunLeased"],
    "cluster.failures": ["StageStopped"],
    "cluster.segment_plan": ["SegmentError"],
    "cluster.submit": ["SubmitError", "RunBusy"],
    "cluster.fidelity": ["DetectorError"],
    "cluster.faults": ["FaultSpecError"],
}
# Not the user's to fix: a stage that failed after its restarts (exit 1, a re-run may heal it), a
# photo job whose every photo failed or whose worker died (exit 1), and the reader's internal signal.
OTHER_ERRORS = {"cluster.pipeline": ["StageFailed"], "cluster.segment_images": ["SegmentFailed"],
                "data_shards.order": ["EmptyPass"]}


def classes(table: dict[str, list[str]]) -> list[tuple[str, str]]:
    return [(module, name) for module, names in table.items() for name in names]


@pytest.mark.parametrize("module, name", classes(USER_MISTAKES))
def test_every_user_mistake_is_a_user_error(module, name):
    assert issubclass(getattr(importlib.import_module(module), name), UserError)


@pytest.mark.parametrize("module, name", classes(OTHER_ERRORS))
def test_failures_that_are_not_mistakes_are_not_user_errors(module, name):
    assert not issubclass(getattr(importlib.import_module(module), name), UserError)


def test_the_second_bases_that_code_catches_are_kept():
    from comgan.config import ConfigError
    from data_shards.index import DatasetError
    from data_shards.io import StorageError

    assert issubclass(ConfigError, ValueError) and issubclass(DatasetError, ValueError)
    assert issubclass(StorageError, OSError)  # storage errors are caught as OSError (checkpoints, jobs)


def exception_classes_in_source() -> set[tuple[str, str]]:
    """(module, class) of every exception class the packages and jobs define, read with ast:
    a class whose base is a built-in exception or, in turn, one of these."""
    defined = {}
    for package in ("comgan", "data_shards", "cluster", "jobs"):
        for path in (ROOT / package).glob("*.py"):
            module = f"{package}.{path.stem}"
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ClassDef):
                    bases = [b.attr if isinstance(b, ast.Attribute) else getattr(b, "id", "") for b in node.bases]
                    defined[(module, node.name)] = bases
    builtin = {name for name, value in vars(builtins).items() if isinstance(value, type) and issubclass(value, BaseException)}
    exceptions: set[tuple[str, str]] = set()
    while True:
        names = builtin | {"UserError"} | {name for _, name in exceptions}
        more = {key for key, bases in defined.items() if set(bases) & names} - exceptions
        if not more:
            return exceptions
        exceptions |= more


def test_every_exception_class_is_sorted_into_mistakes_or_not():
    """A new exception class in comgan/, data_shards/, cluster/ or jobs/ is a user mistake (derive
    it from UserError and list it above) or not (list it in OTHER_ERRORS)."""
    known = set(classes(USER_MISTAKES)) | set(classes(OTHER_ERRORS)) | {("comgan.errors", "UserError")}
    assert exception_classes_in_source() == known


class NewMistake(UserError):
    """A kind of user mistake no job has heard of."""


MESSAGE = "s3://AKIA:secret@bucket/x cannot be used\nsecond line"
ONE_LINE = "error: s3://REDACTED@bucket/x cannot be used\n"

# Each job, the arguments it parses, and a function it calls inside its error handling.
JOBS = [
    ("train", ["--config", "tiny"], "cluster.cli", "config_from_args"),
    ("segment", ["--generator", "g", "--config", "tiny"], "cluster.cli", "config_from_args"),
    ("tune", ["beta=0,1"], "jobs.tune", "build_sweep"),
    ("evaluate", ["--data", "d", "--segmenter", "s"], "jobs.evaluate", "check_args"),
    ("generate", ["--generator", "g", "--out", "o"], "jobs.generate", "run"),
    ("segment_images", ["--photos", "p", "--segmenter", "s", "--out", "o"], "cluster.segment_images",
     "segment_images"),
    ("make_shards", ["synthetic", "d"], "jobs.make_shards", "check_destination"),
    ("submit", ["--address", "http://127.0.0.1:8265", "--", "--config", "tiny"], "jobs.submit", "submit"),
]


@pytest.mark.parametrize("job, argv, module, function", JOBS, ids=[job[0] for job in JOBS])
def test_any_user_error_in_a_job_is_one_line_and_exit_2(job, argv, module, function, monkeypatch, capsys):
    def mistake(*args, **kwargs):
        raise NewMistake(MESSAGE)

    main = importlib.import_module(f"jobs.{job}").main
    monkeypatch.setattr(importlib.import_module(module), function, mistake)
    assert main(argv) == 2
    assert capsys.readouterr().err == ONE_LINE


# Each job with a prefix of one of its long options: argparse would take it for that option.
ABBREVIATED = {"train": ["--stage1"], "segment": ["--print"], "tune": ["--dry"], "evaluate": ["--colour"],
               "generate": ["--over"], "segment_images": ["--colour"], "make_shards": ["synthetic", "d", "--over"],
               "submit": ["--allow-insecure"]}


@pytest.mark.parametrize("job, argv, module, function", JOBS, ids=[job[0] for job in JOBS])
def test_usage_mistakes_are_one_line_and_options_are_never_abbreviated(job, argv, module, function, monkeypatch,
                                                                       capsys):
    """One `error:` line, exit 2, for what the parser refuses; and a prefix of an option is refused,
    not silently taken for the option (`--colour` for --colour-refine)."""
    monkeypatch.setattr(importlib.import_module(module), function, lambda *a, **k: pytest.fail("not refused"))
    main = importlib.import_module(f"jobs.{job}").main
    abbreviated = ABBREVIATED[job]
    words = [f"unrecognized arguments: {abbreviated[-1]}", f"jobs/{job}.py --help"]
    argv = abbreviated if job == "make_shards" else [*abbreviated, *argv]
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    one_line_error(stopped.value.code, capsys.readouterr().err, *words)
