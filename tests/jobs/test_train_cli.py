"""jobs/train.py as a user runs it: help, and one-line errors for bad input (no traceback)."""
from __future__ import annotations

import os

import pytest

from tests.data_shards.fake_datasets import write_set
from tests.helpers import one_line_error, run_train, tiny_data


def test_help():
    p = run_train("--help")
    assert p.returncode == 0
    for word in ("--config", "--workers", "--storage", "--name", "key=value", "ray job submit"):
        assert word in p.stdout


@pytest.mark.parametrize("args, message", [
    (["stage1.bogus=1"], "unknown config key 'stage1.bogus'"),
    (["stage1.beta=-1"], "stage1.beta must be >= 0"),
    (["model.num_categories=0"], "must be >= 1"),
    (["model.resolution=24"], "power of two from 16 to 2048"),
    (["--config", "nope"], "unknown config 'nope'"),
    (["run.mixed_precision=fp16"], "run.mixed_precision=fp16 needs GPUs"),
    (["run.mixed_precision=fp32"], "run.mixed_precision must be one of no, bf16, fp16"),
    (["run.keep_checkpoints=0"], "run.keep_checkpoints must be >= 1"),
    (["--config", "redo", "--stage1-only"], "ReDO has no stage 1"),
    (["--config", "redo", "stage2.generator=runs/x/stage1/generator.pt"], "ReDO learns from the photos alone"),
])
def test_bad_config_is_one_line(args, message):
    p = run_train(*args)
    one_line_error(p.returncode, p.stderr, message)


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_missing_or_empty_shards_is_one_line(tmp_path, make):
    folder = tmp_path / "shards"
    if make == "empty":
        folder.mkdir()
    p = run_train("--config", "tiny", f"data.train={folder}", "data.synthetic=false",
                  f"--storage={tmp_path / 'runs'}")
    one_line_error(p.returncode, p.stderr, str(folder))


def test_a_mistyped_data_path_is_one_line_and_gets_no_synthetic_images(tmp_path):
    """data.synthetic is on by default, yet only its own folders are filled: a path that holds
    nothing names itself (and how to write synthetic data there on purpose), and stays empty."""
    typo = tmp_path / "cub" / "trian"
    p = run_train("--config", "tiny", f"data.train={typo}", "data.eval=''", f"--storage={tmp_path / 'runs'}")
    line = one_line_error(p.returncode, p.stderr, "make_shards.py synthetic")
    assert line.startswith(f"error: data.train={typo}: nothing is there")
    assert not (tmp_path / "cub").exists()


def test_a_folder_of_images_names_the_command_that_makes_shards_of_it(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "bird.jpg").write_bytes(b"not read")
    p = run_train("--config", "tiny", f"data.train={photos}", "data.eval=''", f"--storage={tmp_path / 'runs'}")
    one_line_error(p.returncode, p.stderr, f"python jobs/make_shards.py folder {photos} {photos}-shards")
    assert sorted(os.listdir(photos)) == ["bird.jpg"]


def test_bad_fault_spec_is_one_line(tmp_path):
    """A typo in COMGAN_FAULT stops the driver before any worker starts, not a worker mid-run."""
    env = {**os.environ, "COMGAN_FAULT": "stage=stage1 rank=one step=5 marker=/tmp/x"}
    p = run_train("--config", "tiny", f"--storage={tmp_path / 'runs'}", env=env)
    one_line_error(p.returncode, p.stderr, "'one' is not an integer")
    assert not (tmp_path / "runs").exists()


def test_shards_without_a_usable_image_stop_before_training_with_one_line(tmp_path):
    """Images stored under a field the reader does not look for: one error line from the driver's
    check, exit 2, and no worker started (before, the reader looped forever)."""
    samples = [{"__key__": f"{i:06d}", "picture.jpg": b"jpeg bytes", "json": b"{}"} for i in range(80)]
    url = write_set(tmp_path / "wrong-keys", [samples], has_masks=False)
    p = run_train("--config", "tiny", f"data.train={url}", "data.eval=''", "data.synthetic=false",
                  "--storage", str(tmp_path / "runs"))
    assert p.returncode == 2, p.stderr
    error = [line for line in p.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and "Traceback" not in p.stderr
    assert "64 samples tried in a row, none usable" in error[0] and "fields seen: json, picture.jpg" in error[0]
    assert not (tmp_path / "runs" / "tiny" / "stage1").exists(), "no worker started"


# A key-in-URL and a presigned URL: used as given, never written or printed with their secrets.
SECRET_TRAIN = "s3://AKIA:secret@bucket/x"
PRESIGNED_EVAL = ("https://bucket.s3.amazonaws.com/eval?X-Amz-Algorithm=AWS4-HMAC-SHA256"
                  "&X-Amz-Credential=AKIAEXAMPLE%2F20260101%2Fus-east-1%2Fs3%2Faws4_request"
                  "&X-Amz-Security-Token=sessiontoken&X-Amz-Signature=feedface0123")
URL_SECRETS = ("secret", "AKIAEXAMPLE", "sessiontoken", "feedface0123")


def test_print_config_shows_urls_without_their_credentials():
    p = run_train("--config", "tiny", f"data.train={SECRET_TRAIN}", f"data.eval={PRESIGNED_EVAL}", "--print-config")
    assert p.returncode == 0, p.stderr
    assert not [s for s in URL_SECRETS if s in p.stdout + p.stderr]
    assert "train: s3://REDACTED@bucket/x" in p.stdout and "X-Amz-Signature=REDACTED" in p.stdout


def test_a_mistake_about_a_url_with_credentials_is_one_line_without_them(tmp_path):
    """Nothing at the URL (memory:// holds nothing in a new process): the error and the log lines
    name the URL, not its password."""
    p = run_train("--config", "tiny", "data.train=memory://AKIA:secret@bucket/x", "data.eval=''",
                  f"--storage={tmp_path / 'runs'}")
    one_line_error(p.returncode, p.stderr, "error: data.train=memory://REDACTED@bucket/x: nothing is there")
    assert "secret" not in p.stdout + p.stderr


def test_a_config_file_that_is_not_yaml_text_is_one_line(tmp_path):
    """A binary file given as --config (a checkpoint, an image) is named, not a UnicodeDecodeError."""
    for name in ("weights.yaml", "weights.pt"):
        config = tmp_path / name
        config.write_bytes(bytes(range(256)) * 4)
        p = run_train("--config", config, "--print-config")
        one_line_error(p.returncode, p.stderr, str(config), "not a YAML text file")


def test_an_empty_config_name_is_one_line():
    """`--config ""` (an unset shell variable) is a mistake, not the default preset."""
    p = run_train("--config", "", "--print-config")
    one_line_error(p.returncode, p.stderr, "--config is empty", "tiny")
    assert p.stdout == ""


@pytest.mark.parametrize("where", ["data.train", "data.eval", "--storage"])
def test_a_file_where_a_folder_is_expected_is_one_line(tiny_shards, tmp_path, where):
    """The file is named, left as it was, and no run folder appears anywhere."""
    file = tmp_path / "notes.txt"
    file.write_text("mine")
    storage = file if where == "--storage" else tmp_path / "runs"
    given = [] if where == "--storage" else [f"{where}={file}"]
    p = run_train("--config", "tiny", *tiny_data(tiny_shards), *given, f"--storage={storage}")
    one_line_error(p.returncode, p.stderr, f"{file} is a file, not a folder")
    assert file.read_text() == "mine" and sorted(os.listdir(tmp_path)) == ["notes.txt"]


@pytest.mark.parametrize("where", ["data.train", "--storage"])
def test_an_unknown_url_scheme_is_one_line_naming_the_schemes_that_work(tiny_shards, tmp_path, where):
    given = ["--storage=foo://x/runs"] if where == "--storage" else ["data.train=foo://x/train",
                                                                      f"--storage={tmp_path / 'runs'}"]
    p = run_train("--config", "tiny", *tiny_data(tiny_shards), *given)
    one_line_error(p.returncode, p.stderr, "foo://x/", "unknown URL scheme 'foo'", "local path", "file://", "s3://")
    assert not (tmp_path / "runs").exists()


def test_a_usage_mistake_is_one_line():
    p = run_train("--config", "tiny", "--no-such-flag")
    one_line_error(p.returncode, p.stderr, "unrecognized arguments: --no-such-flag", "jobs/train.py --help")
