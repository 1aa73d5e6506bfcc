"""Training checkpoints through Ray Train: what they hold, how they are written and restored.

A checkpoint is one `state.pt` in the project's single format (comgan.artifacts): every network,
G_ema, the optimisers, the step, every rank's RNG states, the fp16 loss scale and the resolved
config. Rank 0 writes it
to a local temporary folder and hands that to `ray.train.report`, which uploads it to
<storage>/<run>/<stage>/checkpoint_<time>/ and only then registers it in the run's checkpoint
manager snapshot. A crash at any point before that leaves at most an unregistered folder, which
is never restored; Ray keeps the newest `run.keep_checkpoints` and deletes older ones.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Callable

import ray.train
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from comgan.artifacts import from_bytes, to_bytes
from data_shards.io import read_bytes, url_exists

CHECKPOINT_FILE = "state.pt"


def latest(kind: str) -> dict | None:
    """The newest registered checkpoint of this stage (after a worker restart or a re-run)."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        with open(os.path.join(d, CHECKPOINT_FILE), "rb") as fh:
            state = from_bytes(fh.read(), what=f"checkpoint {checkpoint.path}")
    if state["kind"] != kind:
        raise RuntimeError(f"checkpoint {checkpoint.path} is a {state['kind']}, expected {kind}")
    return state


def rng_states(accelerator: Accelerator) -> list[dict]:
    """Every rank's RNG states, in rank order. A collective: all ranks must call it."""
    mine = {"torch": torch.get_rng_state()}
    if accelerator.device.type == "cuda":
        mine["cuda"] = torch.cuda.get_rng_state(accelerator.device)
    return gather_object([mine]) if accelerator.num_processes > 1 else [mine]


def restore_process_state(saved: dict, accelerator: Accelerator) -> bool:
    """Restore what lives outside the networks and optimisers: the fp16 loss scale, and this
    rank's random stream where the checkpoint left it. The stream only with the same number of
    ranks; returns False then, and the caller reseeds."""
    if accelerator.scaler is not None and saved.get("grad_scaler"):
        accelerator.scaler.load_state_dict(saved["grad_scaler"])
    states = saved.get("rng") or []
    if len(states) != accelerator.num_processes:
        return False
    mine = states[accelerator.process_index]
    torch.set_rng_state(mine["torch"])
    if "cuda" in mine and accelerator.device.type == "cuda":
        torch.cuda.set_rng_state(mine["cuda"], accelerator.device)
    return True


def report(metrics: dict, accelerator: Accelerator, state: dict | None,
           crash_point: Callable[[], None] = lambda: None) -> None:
    """Every rank reports (it is a barrier); rank 0 attaches the checkpoint when there is one."""
    if state is not None:
        state["rng"] = rng_states(accelerator)
        state["grad_scaler"] = accelerator.scaler.state_dict() if accelerator.scaler is not None else None
    if state is None or not accelerator.is_main_process:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="comgan-ckpt-") as d:
        data = to_bytes(state)
        with open(os.path.join(d, CHECKPOINT_FILE), "wb") as fh:
            fh.write(data[: len(data) // 2])
            fh.flush()
            crash_point()  # the fault tests kill the worker here, leaving a torn file behind
            fh.write(data[len(data) // 2:])
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


def wait_until_registered(stage_dir: str, step: int, timeout: float = 120.0) -> None:
    """Block until the checkpoint of `step` (or a later one) is registered in the stage's
    checkpoint manager snapshot. Ray Train registers a reported checkpoint only when its controller
    next polls the workers (every 2 s): a worker lost before that loses the report too. Used by the
    fault injection, which must lose exactly the steps after a committed checkpoint."""
    snapshot = stage_dir.rstrip("/") + "/checkpoint_manager_snapshot.json"
    deadline = time.time() + timeout
    while step > 0 and time.time() < deadline:
        if url_exists(snapshot):
            latest_result = json.loads(read_bytes(snapshot)).get("latest_checkpoint_result") or {}
            if latest_result.get("metrics", {}).get("step", -1) >= step:
                return
        time.sleep(0.2)
