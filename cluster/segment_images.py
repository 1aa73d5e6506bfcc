"""Segment a user's own photos with a trained segmenter (jobs/segment_images.py): the job on the
driver, and its Ray part.

The work is the Ray-free modules': cluster/segment_plan.py lists the photos, the files they become
(the output folder's layout), what is there already and the report; a `PhotoSegmenter`
(cluster/photo_segmenter.py) turns photos into mask files, in this process (workers=0) or as a Ray
actor per worker that takes chunks of the photo list (workers>=1). Ray start-up and how many
workers the cluster's nodes hold are cluster/placement.py's.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import TextIO

from comgan.errors import UserError
from data_shards.io import is_local_path, join_url
from data_shards.progress import Progress, say

from . import placement
from .photo_segmenter import PhotoSegmenter, Settings, read_segmenter, resolve_device
from .segment_plan import REPORT, JobReport, Outcome, Photo, SegmentError, plan, still_to_do
from .storage import absolute_url

WARN_LIMIT = 10          # skipped photos named one line each on the console; all are in the report
REPORT_EVERY = 100       # photos between two writes of the report while the job runs
PLACEMENT_TIMEOUT = 1800.0  # s the Ray workers may take to start (an autoscaler's GPU node: boot, installs)


class SegmentFailed(RuntimeError):
    """The job ran but failed: every photo was skipped (the report says why), or a Ray worker died
    after its restart; one line."""


# ---------------------------------------------------------------------------------------------
# Ray workers

def _first_line(error: BaseException) -> str:
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0][:200]}" if lines else type(error).__name__


def check_request(cpus: float, gpus: float) -> None:
    """Refuse per-worker amounts Ray can never grant, whatever the cluster (SegmentError)."""
    for flag, amount in (("--cpus-per-worker", cpus), ("--gpus-per-worker", gpus)):
        if not math.isfinite(amount) or amount < 0:
            raise SegmentError(f"{flag} must be a number >= 0, got {amount:g}")
        if amount and not placement.units(amount):
            raise SegmentError(f"{flag} {amount:g}: Ray counts resources in steps of "
                               f"{1 / placement.RESOURCE_UNITS:g}")
    if gpus > 1 and not float(gpus).is_integer():
        raise SegmentError(f"--gpus-per-worker {gpus:g}: a worker gets a fraction of one GPU or whole GPUs, "
                           "never a mix (Ray would wait for such a worker forever)")


def not_started_error(nodes: list[placement.Node], workers: int, started: int, cpus: float, gpus: float,
                      timeout: float) -> str:
    """The line for workers that were not all up `timeout` seconds after they were asked for."""
    why = placement.shortfall(nodes, workers, cpus, gpus, f"--workers {workers}")
    why = why or (f"the cluster ({placement.amounts(*placement.totals(nodes))} on {len(nodes)} node(s)) has room "
                  "for them, but other work may hold it, or loading the segmenter takes longer")
    return (f"only {started} of {workers} Ray worker(s) started within {timeout:g}s (--placement-timeout): "
            f"{why}; use fewer --workers, smaller --cpus-per-worker / --gpus-per-worker, or a longer "
            "--placement-timeout for a cluster that is still adding nodes")


def _check_room(workers: int, cpus: float, gpus: float, timeout: float, local: bool,
                say_line: Callable[[str], None]) -> None:
    """Refuse workers the nodes up now can never hold when no node can be added (SegmentError);
    on a cluster an autoscaler may grow, say what the job waits for."""
    short = placement.shortfall(placement.alive_nodes(), workers, cpus, gpus, f"--workers {workers}")
    if short and local:  # a cluster started here has all the nodes it will ever have
        raise SegmentError(f"{short}; use fewer --workers or smaller --cpus-per-worker / --gpus-per-worker")
    if short:
        say_line(f"note: {short}; waiting up to {timeout:g}s (--placement-timeout) for the cluster to add nodes")


def _on_ray(photos: list[Photo], segmenter_url: str, settings: Settings, workers: int,
            cpus_per_worker: float, gpus_per_worker: float, on_batch: Callable[[Outcome], None] | None,
            say_line: Callable[[str], None], placement_timeout: float = PLACEMENT_TIMEOUT) -> None:
    """Chunks of the photo list, handed to `workers` actors as each finishes its last one;
    `on_batch` gets each chunk's outcome as it comes back."""
    import ray
    from ray.exceptions import RayError, RayTaskError
    from ray.util import ActorPool

    local = placement.init_ray()
    _check_room(workers, cpus_per_worker, gpus_per_worker, placement_timeout, local, say_line)
    if not local:
        local_paths = [u for u in (segmenter_url, photos[0].url, photos[0].mask) if is_local_path(u)]
        if local_paths:
            say_line(f"note: {local_paths[0]} is a local path: every node of the Ray cluster must see it there "
                     "(keep the segmenter, photos and --out on s3://... for a multi-node cluster)")
    worker_settings = dataclasses.replace(settings, device="cuda" if gpus_per_worker else "cpu")
    actor_class = ray.remote(PhotoSegmenter).options(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker,
                                                     max_restarts=1, max_task_retries=1)
    actors = [actor_class.remote(segmenter_url, worker_settings) for _ in range(workers)]
    size = 4 * settings.batch  # a multiple of the batch: the same batches as in one process
    chunks = [photos[i:i + size] for i in range(0, len(photos), size)]
    try:
        # Every worker up (placed, segmenter loaded) before any work: a worker Ray cannot place
        # would otherwise hold its first chunk, and the job, forever. A worker whose start failed
        # counts as up here; its error comes with the first chunk handed to it.
        up, waiting = ray.wait([actor.ready.remote() for actor in actors], num_returns=len(actors),
                               timeout=placement_timeout)
        if waiting:
            raise SegmentError(not_started_error(placement.alive_nodes(), workers, len(up), cpus_per_worker,
                                                 gpus_per_worker, placement_timeout))
        for part in ActorPool(actors).map_unordered(lambda actor, chunk: actor.segment.remote(chunk), chunks):
            if on_batch is not None:
                on_batch(part)
    except RayTaskError as e:  # a user error raised inside a worker (storage): one line, as in-process
        cause = getattr(e, "cause", None)
        if isinstance(cause, UserError):
            raise cause from None
        raise SegmentFailed(f"a Ray worker failed: {_first_line(cause or e)}") from e
    except RayError as e:  # a worker died twice (out of memory, node lost)
        raise SegmentFailed(f"a Ray worker failed: {_first_line(e)}") from e
    finally:
        for actor in actors:
            ray.kill(actor)


# ---------------------------------------------------------------------------------------------
# the job (driver)

def segment_images(photos_url: str, segmenter_url: str, out_url: str, settings: Settings = Settings(),
                   workers: int = 0, overwrite: bool = False, cpus_per_worker: float = 1,
                   gpus_per_worker: float = 0, stream: TextIO | None = None, progress: bool = True,
                   placement_timeout: float = PLACEMENT_TIMEOUT, resume: bool = False,
                   report_every: int = REPORT_EVERY) -> dict:
    """Segment every photo under `photos_url` into `out_url` (layout: cluster/segment_plan.py); returns
    the report, also written to <out>/segment_report.json. Raises SegmentError / ArtifactError /
    StorageError (one line) before any work for bad inputs or existing outputs without
    `overwrite` or `resume`, SegmentError also when Ray workers can never be placed, or are not all up after
    `placement_timeout` seconds; SegmentFailed after it when every photo was skipped or a Ray
    worker failed.

    The report is written as the job goes (after the first batch, then every `report_every`
    photos, and when it is interrupted), with "complete": false until the end. With `resume`,
    photos whose mask (and, with overlays, overlay) is already in `out_url` are not done again:
    the report lists them among the segmented (their entries from the report found there, when
    it has them) and counts them in "num_resumed"."""
    started = time.monotonic()
    stream = stream if stream is not None else sys.stderr
    check_arguments(workers, overwrite, resume, cpus_per_worker, gpus_per_worker, placement_timeout)
    photos_url, out_url, segmenter_url = absolute_url(photos_url), absolute_url(out_url), absolute_url(segmenter_url)
    photos = plan(photos_url, out_url, settings.overlays)
    todo, resumed = still_to_do(photos, out_url, overwrite, resume)
    artifact, resolution = read_segmenter(segmenter_url)
    device = resolve_device(settings.device) if workers == 0 else None
    bar = Progress(total=len(todo), label="segmenting", stream=stream, enabled=progress, unit="photos")
    head = {"photos": photos_url, "segmenter": segmenter_url, "out": out_url,
            "settings": {**asdict(settings), "device": str(device) if device else f"{workers} Ray worker(s)",
                         "resolution": resolution, "workers": workers}}
    report = JobReport(join_url(out_url, REPORT), head, photos, resumed, report_every, started)

    # Through the progress bar when there is one, so that the two never garble each other; with
    # --quiet (no bar) warnings and notes still print.
    say_line = bar.note if progress else functools.partial(say, stream=stream)

    def on_batch(part: Outcome) -> None:
        for line in skipped_warnings(len(report.done.skipped), part.skipped):
            say_line(line)
        bar.advance(len(part.segmented) + len(part.skipped))
        report.add(part)

    if resumed:
        say_line(f"resuming: {len(resumed)} of {len(photos)} photos already have their mask in {out_url}")
    try:
        if todo and workers == 0:
            PhotoSegmenter(segmenter_url, settings, artifact).segment(todo, on_batch)
        elif todo:
            _on_ray(todo, segmenter_url, settings, workers, cpus_per_worker, gpus_per_worker, on_batch, say_line,
                    placement_timeout)
    except BaseException:
        if report.unreported:  # what was written since the last report, for --resume and for the user
            with contextlib.suppress(Exception):
                report.write(complete=False)
        raise
    finally:
        bar.close()
    result = report.write(complete=True)
    if not report.done.segmented:
        first = report.done.skipped[0]
        raise SegmentFailed(f"none of the {len(photos)} photos could be segmented (e.g. {first['photo']}: "
                            f"{first['reason']}); see {report.url}")
    return result


def check_arguments(workers: int, overwrite: bool, resume: bool, cpus_per_worker: float, gpus_per_worker: float,
                    placement_timeout: float) -> None:
    """Refuse (SegmentError) flags that contradict each other or that Ray could never honour, before
    any photo is listed."""
    if resume and overwrite:
        raise SegmentError("--resume keeps the masks already written and --overwrite replaces them: give one")
    if workers:
        check_request(cpus_per_worker, gpus_per_worker)
        if not (math.isfinite(placement_timeout) and placement_timeout > 0):
            raise SegmentError(f"--placement-timeout must be a number of seconds > 0, got {placement_timeout:g}")


def skipped_warnings(skipped_before: int, skipped: list[dict]) -> list[str]:
    """The console's lines for newly `skipped` photos, `skipped_before` having been skipped earlier
    in the job: the first WARN_LIMIT of the job are named, then one line says the report lists them all."""
    lines = []
    for count, entry in enumerate(skipped, start=skipped_before + 1):
        if count <= WARN_LIMIT:
            lines.append(f"warning: skipped {entry['photo']}: {entry['reason']}")
        elif count == WARN_LIMIT + 1:
            lines.append(f"warning: more photos skipped; {REPORT} lists them all")
    return lines
