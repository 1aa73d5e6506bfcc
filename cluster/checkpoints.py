"""Training checkpoints through Ray Train: what they hold, how they are written and restored.

A checkpoint is one `state.pt` in the project's single format (comgan.artifacts): the stage
state's `state_dict()` (every network, G_ema, the optimisers, the step), the fp16 loss scale, the
resolved config, and for every rank its random stream and its data position (the loader cursor),
so that a run resumed with the same worker count continues exactly as it would have. Rank 0 writes it
to a local temporary folder and hands that to `ray.train.report`, which uploads it to
<storage>/<run>/<stage>/checkpoint_<time>/ and only then registers it in the run's checkpoint
manager snapshot. A crash at any point before that leaves at most an unregistered folder, which
is never restored; Ray keeps the newest `run.keep_checkpoints` and deletes older ones.
"""
from __future__ import annotations

import logging
import os
import tempfile
import time
import ray.train
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from comgan.artifacts import ArtifactError, from_bytes, to_bytes
from data_shards.io import join_url, list_folders, move_file, read_bytes, redact, sha256_hex, url_exists, write_bytes

from . import faults

CHECKPOINT_FILE = "state.pt"
logger = logging.getLogger("comgan.checkpoints")


def latest(kind: str, stage_dir: str = "") -> dict | None:
    """The newest registered checkpoint of this stage (after a worker restart or a re-run). One
    that cannot be read (a damaged or truncated state.pt) is passed over with a warning for the
    previous one kept in `stage_dir` (newest first); when none is readable the stage starts over,
    with a warning: a damaged file must not keep a run from ever resuming."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    try:
        with checkpoint.as_directory() as d:
            with open(os.path.join(d, CHECKPOINT_FILE), "rb") as fh:
                state = from_bytes(fh.read(), what=f"checkpoint {checkpoint.path}")
    except (ArtifactError, OSError) as e:
        state = _previous_checkpoint(checkpoint.path, stage_dir, e)
        if state is None:
            return None
    if state.get("kind") != kind:
        # Not this stage's (a folder copied or renamed by hand): no restart can heal that.
        raise ArtifactError(redact(f"checkpoint {checkpoint.path} holds a {state.get('kind')!r} where this stage "
                                   f"resumes from a {kind!r}; move the stage folder away to start the stage over"))
    return state


def _previous_checkpoint(broken_path: str, stage_dir: str, error: BaseException) -> dict | None:
    """The newest readable checkpoint in `stage_dir` older than the unreadable `broken_path`."""
    broken = str(broken_path).rstrip("/").rsplit("/", 1)[-1]
    first = (str(error).splitlines() or [type(error).__name__])[0]
    older = [n for n in list_folders(stage_dir, "checkpoint_") if n < broken] if stage_dir else []
    for name in reversed(older):
        url = join_url(stage_dir, name, CHECKPOINT_FILE)
        try:
            state = from_bytes(read_bytes(url), what=f"checkpoint {url}")
        except (ArtifactError, OSError) as e:
            logger.warning(redact(f"checkpoint {url} is not readable either ({type(e).__name__})"))
            continue
        logger.warning(redact(f"the latest checkpoint {broken} cannot be read ({first}); resuming from the "
                              f"previous one kept, {name}"))
        return state
    logger.warning(redact(f"the latest checkpoint {broken} cannot be read ({first}) and no earlier one is kept "
                          f"in {stage_dir or 'the stage folder'}: the stage starts over from step 0"))
    return None


# ---------------------------------------------------------------------------------------------
# Exported artifacts (generator.pt, segmenter.pt): written with their sha256 beside them, and
# trusted on a re-run only when they load and match it.

CHECKSUM_SUFFIX = ".sha256"


def export_artifact(url: str, data: bytes) -> None:
    """Write a stage's artifact, then its sha256 in <url>.sha256 (after it: a checksum never vouches
    for a file that was not completely written)."""
    write_bytes(url, data)
    write_bytes(url + CHECKSUM_SUFFIX, f"{sha256_hex(data)}  {url.rstrip('/').rsplit('/', 1)[-1]}\n".encode())


def artifact_problem(url: str, kind: str) -> str | None:
    """Why the artifact at `url` (which exists) cannot be trusted, or None when it loads as a
    `kind` file and matches its recorded sha256. One written before checksums were recorded (no
    .sha256 beside it) is trusted when it loads."""
    data = read_bytes(url)
    sidecar = url + CHECKSUM_SUFFIX
    if url_exists(sidecar):
        recorded = read_bytes(sidecar).decode("utf-8", "replace").split()
        if not recorded or recorded[0].lower() != sha256_hex(data):
            return f"its sha256 does not match {sidecar.rsplit('/', 1)[-1]} ({len(data)} bytes)"
    try:
        obj = from_bytes(data, what=url)
    except ArtifactError as e:
        return str(e)
    if obj.get("kind") != kind:
        return f"it is a {obj.get('kind')!r} file, expected {kind!r}"
    return None


def artifact_done(url: str, kind: str, warn=None) -> bool:
    """Whether a stage's exported artifact is there and sound, so that the stage need not run.
    A damaged one (truncated, unreadable, not matching its sha256) is set aside, renamed to
    <url>.bad-<time> (never deleted), with a warning through `warn`, and False is returned: the
    stage runs again from its latest checkpoint and exports anew."""
    if not url_exists(url):
        return False
    problem = artifact_problem(url, kind)
    if problem is None:
        return True
    aside = f"{url}.bad-{time.strftime('%Y%m%d-%H%M%S')}"
    move_file(url, aside)
    move_file(url + CHECKSUM_SUFFIX, aside + CHECKSUM_SUFFIX)
    message = f"{url} cannot be used ({problem}): set aside as {aside}; the stage runs again from its latest checkpoint"
    (warn or logger.warning)(redact(message))
    return False


def process_state(accelerator: Accelerator, loader: dict) -> dict:
    """This rank's state outside the networks: its random streams and its data position."""
    mine = {"torch": torch.get_rng_state(), "loader": loader}
    if accelerator.device.type == "cuda":
        mine["cuda"] = torch.cuda.get_rng_state(accelerator.device)
    return mine


def rank_state(saved: dict | None, accelerator: Accelerator, key: str):
    """This rank's saved entry `key` ("torch", "loader", ...), or None when there is no checkpoint
    or it was written by another number of ranks (then no rank's state is this rank's)."""
    ranks = (saved or {}).get("ranks") or []
    if len(ranks) != accelerator.num_processes:
        return None
    return ranks[accelerator.process_index].get(key)


def resume_or_seed(seed: int, accelerator: Accelerator, step: int, saved: dict | None) -> None:
    """A resumed rank gets back its fp16 loss scale and continues its saved random stream; a
    fresh one (or a resume onto another number of workers) is seeded from (seed, rank, step).
    Codes differ per rank, yet a fixed seed and worker count reproduce the run."""
    if saved and accelerator.scaler is not None and saved.get("grad_scaler"):
        accelerator.scaler.load_state_dict(saved["grad_scaler"])
    rng = rank_state(saved, accelerator, "torch")
    if rng is None:
        torch.manual_seed(hash((seed, accelerator.process_index, step)) % (2 ** 31))
        return
    torch.set_rng_state(rng)
    cuda = rank_state(saved, accelerator, "cuda")
    if cuda is not None and accelerator.device.type == "cuda":
        torch.cuda.set_rng_state(cuda, accelerator.device)


def report(metrics: dict, accelerator: Accelerator, state: dict, loader: dict, step: int) -> None:
    """Every rank reports (it is a barrier) with its process state; rank 0 attaches the checkpoint:
    `state` plus every rank's process state (gathered, in rank order) and the fp16 loss scale."""
    mine = process_state(accelerator, loader)
    ranks = gather_object([mine]) if accelerator.num_processes > 1 else [mine]
    if not accelerator.is_main_process:
        ray.train.report(metrics)
        return
    state = {**state, "ranks": ranks,
             "grad_scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None}
    with tempfile.TemporaryDirectory(prefix="comgan-ckpt-") as d:
        data = to_bytes(state)
        with open(os.path.join(d, CHECKPOINT_FILE), "wb") as fh:
            # Written in two halves so that the fault tests can kill the worker in between (a torn
            # file, as a crash leaves); faults.point is a no-op unless COMGAN_FAULT is set.
            fh.write(data[: len(data) // 2])
            fh.flush()
            faults.point("checkpoint", step)
            fh.write(data[len(data) // 2:])
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
