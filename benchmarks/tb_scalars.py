"""Read the scalars back from a run's TensorBoard event files (every file of a folder, in order)."""
from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing.event_file_loader import EventFileLoader


def read_scalars(folder: Path) -> list[tuple[float, int, str, float]]:
    """(wall_time, step, tag, value) of every scalar, across all event files of the folder. A
    restarted worker writes a new file, so a resumed run has steps that repeat after a failure."""
    rows = []
    for path in sorted(Path(folder).glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                kind = value.WhichOneof("value")  # the loader turns simple_value into a 0-d tensor
                if kind == "simple_value":
                    rows.append((event.wall_time, event.step, value.tag, value.simple_value))
                elif kind == "tensor" and value.tensor.float_val:
                    rows.append((event.wall_time, event.step, value.tag, value.tensor.float_val[0]))
    return sorted(rows)


def curve(rows, tag: str) -> tuple[list[int], list[float]]:
    """One tag's (steps, values); where a step was logged twice (before and after a resume), the
    later value wins."""
    latest = {step: v for _, step, t, v in rows if t == tag}
    steps = sorted(latest)
    return steps, [latest[s] for s in steps]
