"""Deliberate worker failures, for the fault-tolerance tests and the resume benchmark.

    COMGAN_FAULT="stage=stage1 rank=1 step=5 at=step marker=/tmp/fault-once"

makes rank 1 of stage 1 kill itself with SIGKILL (what the OOM killer or a lost node does: no
cleanup, no exception) right after finishing step 5. `at=checkpoint` kills it instead half-way
through writing the checkpoint of step 5 (that rank must be 0, the one that writes). The fault
fires once: the marker file is created atomically when it fires (holding the time of the kill,
for the benchmark), and a fault whose marker exists does nothing, so the restarted worker runs
through. The driver reads the variable and hands it to the workers with their config.
"""
from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass
from typing import Callable

from comgan.errors import UserError
from data_shards.io import read_bytes, url_exists

ENV = "COMGAN_FAULT"
POINTS = ("step", "checkpoint")


class FaultSpecError(UserError):
    pass


@dataclass(frozen=True)
class Fault:
    stage: str
    rank: int
    step: int
    at: str
    marker: str

    def fire(self, stage: str, rank: int, step: int, at: str, settle: Callable[[], None]) -> None:
        """Kill this process if it is the chosen (stage, rank, step, point) and has not fired yet.
        `settle()` runs first: it waits until the checkpoint before this point is registered,
        so the test loses the work it means to lose, not a checkpoint still in flight."""
        if (stage, rank, step, at) != (self.stage, self.rank, self.step, self.at) or os.path.exists(self.marker):
            return
        settle()
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, f"{time.time():.6f}\n".encode())
        os.close(fd)
        print(f"[fault] killing {stage} rank {rank} at step {step} ({at})", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


def parse(text: str) -> Fault | None:
    """The fault a COMGAN_FAULT value describes; None for an empty value."""
    if not text.strip():
        return None
    fields = dict(item.partition("=")[::2] for item in text.split())
    missing = {"stage", "rank", "step", "marker"} - set(fields)
    unknown = set(fields) - {"stage", "rank", "step", "at", "marker"}
    if missing or unknown:
        raise FaultSpecError(f"{ENV}={text!r}: missing {sorted(missing)} / unknown {sorted(unknown)}; expected "
                             f"'stage=stage1 rank=0 step=5 at=step marker=/tmp/file'")
    fault = Fault(fields["stage"], _int(fields["rank"], text), _int(fields["step"], text),
                  fields.get("at", "step"), fields["marker"])
    if fault.stage not in ("stage1", "stage2") or fault.at not in POINTS:
        raise FaultSpecError(f"{ENV}={text!r}: stage must be stage1 or stage2, at one of {', '.join(POINTS)}")
    if fault.at == "checkpoint" and fault.rank != 0:
        raise FaultSpecError(f"{ENV}={text!r}: only rank 0 writes checkpoints")
    return fault


def from_environment() -> str:
    """The raw value, validated on the driver so a typo fails before any worker starts."""
    text = os.environ.get(ENV, "")
    parse(text)
    return text


def _int(value: str, text: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise FaultSpecError(f"{ENV}={text!r}: {value!r} is not an integer") from None


_installed: Callable[[str, int], None] | None = None


def install(text: str, stage: str, rank: int, stage_dir: str, checkpoint_every: int) -> None:
    """Arm this worker's crash point (the fault tests only; workers call it when COMGAN_FAULT was
    set on the driver). Before the kill, wait until the last checkpoint strictly before the
    killed step is registered, so the test loses exactly the steps after a committed checkpoint."""
    global _installed
    fault = parse(text)
    if fault is None:
        return

    def settle(step: int) -> None:
        wait_until_registered(stage_dir, (step - 1) // checkpoint_every * checkpoint_every)

    _installed = lambda at, step: fault.fire(stage, rank, step, at, lambda: settle(step))  # noqa: E731


def wait_until_registered(stage_dir: str, step: int, timeout: float = 120.0) -> None:
    """Block until the checkpoint of `step` (or a later one) is registered in the stage's
    checkpoint manager snapshot. Ray Train registers a reported checkpoint only when its controller
    next polls the workers (every 2 s): a worker lost before that loses the report too, and a fault
    must lose exactly the steps after a committed checkpoint. (It reads Ray Train's snapshot file,
    not a checkpoint of ours: nothing but fault injection needs it.)"""
    snapshot = stage_dir.rstrip("/") + "/checkpoint_manager_snapshot.json"
    deadline = time.time() + timeout
    while step > 0 and time.time() < deadline:
        if url_exists(snapshot):
            latest_result = json.loads(read_bytes(snapshot)).get("latest_checkpoint_result") or {}
            if latest_result.get("metrics", {}).get("step", -1) >= step:
                return
        time.sleep(0.2)


def after_each_step(step_fn: Callable, state) -> Callable:
    """`step_fn` followed by the "step" crash point at the step it reached: the worker wraps its
    step in this only when a fault is installed, so normal runs carry no hook in their loop."""
    def step_then_maybe_fail(batch):
        stats = step_fn(batch)
        point("step", state.step)
        return stats

    return step_then_maybe_fail


def point(at: str, step: int) -> None:
    """A place where an installed fault may kill this worker; nothing at all otherwise."""
    if _installed is not None:
        _installed(at, step)
