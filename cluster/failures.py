"""Which worker failures a restart can heal, and how the others stop a stage at once.

Ray Train restarts a failed worker group up to `run.max_failures` times, whatever the error. A lost
node or a network error may heal on the next attempt; a missing shard, a damaged artifact or a
bad config fails the same way every time, and retrying it only delays the message. So a worker
that meets such an error records it in the stage folder before it raises (`record`). Ray then
restarts the group as usual, and every worker of the new attempt finds the record first and
returns without doing anything (`recorded`): one restart of a few seconds instead of
max_failures full attempts. The driver reads the record after `fit()` (`raise_if_recorded`),
clears it, and tells the user which kind of failure it was, in one line.
"""
from __future__ import annotations

import json
import re

from comgan.artifacts import ArtifactError
from comgan.config import ConfigError
from comgan.errors import UserError
from data_shards.index import DatasetError
from data_shards.io import StorageError, join_url, read_bytes, redact, remove_url, url_exists, write_bytes

RECORD = "stopped_for_good.json"

# Errors in a user's inputs: the data, the stored artifacts and checkpoints, the config, the
# storage's answers (missing object, access denied). The same attempt fails the same way again.
FOR_GOOD = (DatasetError, ArtifactError, ConfigError, StorageError)


class StageStopped(UserError):
    """A stage stopped on an error no restart can heal; its checkpoints are kept."""


def original_message(error: BaseException) -> str:
    """The error's own message, without what torch's DataLoader adds when it re-raises a loader
    process's error: " (in DataLoader worker process 0)" today; before, the whole traceback
    ("Caught DatasetError in DataLoader worker process 0 ..."), whose last line is the original."""
    text = str(error).strip()
    if text.startswith("Caught ") and text.splitlines()[-1].count(": "):
        text = text.splitlines()[-1].split(": ", 1)[1]
    return re.sub(r" \(in DataLoader worker process \d+\)$", "", text)


def record(stage_dir: str, stage: str, error: BaseException) -> None:
    """Write down, for the driver and the next attempt, that this stage cannot succeed as it is."""
    entry = {"stage": stage, "kind": type(error).__name__, "message": redact(original_message(error))}
    write_bytes(join_url(stage_dir, RECORD), json.dumps(entry).encode())


def recorded(stage_dir: str) -> dict | None:
    """The record an earlier attempt of this stage left, if any."""
    url = join_url(stage_dir, RECORD)
    if not url_exists(url):
        return None
    try:
        return json.loads(read_bytes(url))
    except (ValueError, StorageError):  # a record torn by a crash still means the stage stopped
        return {"kind": "error", "message": "(the worker's record of it is unreadable)"}


def clear(stage_dir: str) -> None:
    """Forget an earlier run's record: the user may have fixed what it named."""
    remove_url(join_url(stage_dir, RECORD))


def raise_if_recorded(stage_dir: str, stage: str) -> None:
    entry = recorded(stage_dir)
    if entry is None:
        return
    clear(stage_dir)
    raise StageStopped(
        f"{stage} stopped: {entry['message']} ({entry['kind']}). Not retried: it fails the same way every "
        f"time; fix it, then run the same command to resume from the checkpoints kept in {stage_dir}")
