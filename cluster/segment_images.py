"""Segment a user's own photos with a trained segmenter: list, plan, decode, predict, write.

What the photos are, the files they become (the output folder's layout), what is there already and
the report are cluster/segment_plan.py's.

Geometry: a segmenter sees square images at its own resolution, so each photo is resized (squashed,
not cropped, so every pixel gets a mask) to that square, its mask probabilities are upsampled
bilinearly back to the photo's own size and thresholded there, as cluster/evaluate.py scores at a
larger size than the model's. Photos that cannot be read or decoded are reported and skipped.

One `PhotoSegmenter` does the work: in this process (workers=0), or as a Ray actor per worker that
takes chunks of the photo list (workers>=1); both write the same files. Reads and decodes run in a
thread pool ahead of the network, mask upsampling/encoding/writes in another behind it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import math
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import TextIO

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from comgan import inference
from comgan.artifacts import ArtifactError, from_bytes, load_segmenter
from comgan.errors import UserError
from data_shards.images import open_photo, squashed_photo, to_rgb8
from data_shards.io import StorageError, join_url, read_bytes, redact, url_exists, write_bytes
from data_shards.progress import Progress

from . import placement
from .segment_plan import REPORT, JobReport, Outcome, Photo, SegmentError, is_local_path, plan, still_to_do
from .storage import absolute_url

WARN_LIMIT = 10          # skipped photos named one line each on the console; all are in the report
BACKGROUND_DIM = 1 / 3   # overlays: background brightness
FULL_SIZE_AT_ONCE = 2    # photos whose full-size mask / overlay is computed at once (a 48 MP one: ~0.7 GB)
REPORT_EVERY = 100       # photos between two writes of the report while the job runs
PLACEMENT_TIMEOUT = 1800.0  # s the Ray workers may take to start (an autoscaler's GPU node: boot, installs)


class SegmentFailed(RuntimeError):
    """The job ran but failed: every photo was skipped (the report says why), or a Ray worker died
    after its restart; one line."""


@dataclass(frozen=True)
class Settings:
    threshold: float = 0.5    # foreground where the upsampled probability is above this
    batch: int = 32           # photos per forward pass
    overlays: bool = False    # also write <out>/overlays/<stem>.jpg
    device: str = "auto"      # torch device of the network: auto (cuda if available), cpu, cuda, ...
    io_threads: int = 4       # threads reading + decoding ahead, and as many upsampling + writing behind
    flip: bool = False        # average each photo's mask with its mirror image's (inference.mirror_averaged)
    colour: bool = False      # refine each mask by its photo's colours at the segmenter's size (comgan.refine)


# ---------------------------------------------------------------------------------------------
# the segmenter (driver)

def read_segmenter(url: str) -> tuple[bytes, int]:
    """(artifact bytes, the segmenter's resolution), after checking that the file is a segmenter."""
    if not url_exists(url):
        raise ArtifactError(f"segmenter {url} does not exist")
    try:
        data = read_bytes(url)
    except (IsADirectoryError, FileNotFoundError):
        raise ArtifactError(f"segmenter {url} is not a file") from None
    _, model = load_segmenter(from_bytes(data, what=url), what=url)
    return data, model.resolution


def resolve_device(name: str) -> torch.device:
    try:
        return inference.resolve_device(name)
    except ValueError as e:
        raise SegmentError(str(e)) from None


# ---------------------------------------------------------------------------------------------
# pixels (pure functions)

@dataclass
class Decoded:
    pixels: np.ndarray        # uint8 [resolution, resolution, 3]: the photo squashed to the model's input
    size: tuple[int, int]     # (width, height) as displayed
    data: bytes | None        # the file, kept only when an overlay will be drawn from it


def to_input(pixels: list[np.ndarray]) -> torch.Tensor:
    """uint8 [H, W, 3] images -> float [B, 3, H, W] in [-1, 1], as the reader feeds the networks."""
    x = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1


def full_size_mask(prob: torch.Tensor, size: tuple[int, int], threshold: float) -> np.ndarray:
    """bool [height, width] mask from a [1, r, r] probability map: upsampled bilinearly, then
    thresholded at full size (comgan.inference.predict does the same)."""
    width, height = size
    up = F.interpolate(prob[None].float(), size=(height, width), mode="bilinear", align_corners=False)
    return (up[0, 0] > threshold).numpy()


def mask_png(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * np.uint8(255), mode="L").save(buf, format="PNG")
    return buf.getvalue()


# Each 8-bit value dimmed (as (v * BACKGROUND_DIM).astype(uint8) would): a lookup in uint8, never a
# float copy of a photo (a 48 MP photo in float64 is 1.2 GB, per writer thread).
_DIMMED = (np.arange(256) * BACKGROUND_DIM).astype(np.uint8)


def dim_background(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3]: `rgb` where `mask` (bool [H, W]) is set, dimmed elsewhere; one new array."""
    out = _DIMMED[rgb]
    np.copyto(out, rgb, where=mask[..., None])
    return out


def overlay_jpeg(data: bytes, mask: np.ndarray) -> bytes:
    """The photo as displayed with its background dimmed: what the mask keeps stays bright."""
    img, _ = open_photo(data)
    rgb = np.asarray(to_rgb8(img))
    del img
    buf = io.BytesIO()
    Image.fromarray(dim_background(rgb, mask)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# the work: one loaded segmenter turning photos into files

def _read_and_squash(photo: Photo, resolution: int, keep: bool) -> Decoded | str:
    """The decoded photo, or why it is skipped. Storage failures that are not about this one
    file (no credentials, an endpoint that does not answer) stop the job instead."""
    try:
        data = read_bytes(photo.url)
    except FileNotFoundError:
        return "missing (removed after the folder was listed?)"
    except IsADirectoryError:
        return "a folder, not a file"
    except StorageError as e:
        if not is_local_path(photo.url):
            raise
        return f"cannot be read ({e})"  # a local file: permission denied on that file alone
    try:
        pixels, size = squashed_photo(data, resolution)
    except (UnidentifiedImageError, Image.DecompressionBombError) as e:  # not JPEG/PNG/WebP, or too many pixels
        return f"not a readable image: {e}"
    except Exception as e:  # noqa: BLE001 -- a damaged or foreign file may fail anywhere inside PIL: skip it
        detail = (str(e).strip().splitlines() or [""])[0][:160]
        return f"not a readable image ({type(e).__name__}{': ' + detail if detail else ''})"
    return Decoded(pixels, size, data if keep else None)


def _ordered(pool: ThreadPoolExecutor, fn: Callable, items: Iterable, ahead: int) -> Iterator:
    """map(fn, items) in order on `pool`, at most `ahead` items in flight (bounded memory)."""
    it = iter(items)
    pending = deque(pool.submit(fn, x) for x in itertools.islice(it, ahead))
    while pending:
        result = pending.popleft().result()
        pending.extend(pool.submit(fn, x) for x in itertools.islice(it, 1))
        yield result


def _write(photo: Photo, prob: torch.Tensor, decoded: Decoded, threshold: float,
           full_size: threading.Semaphore | None = None) -> dict:
    """Mask (and overlay) of one photo, written. The full-size pixel work (the upsampled mask, the
    decoded photo) runs in at most `full_size`'s count of threads at once; uploads do not wait for it."""
    with full_size or contextlib.nullcontext():
        mask = full_size_mask(prob, decoded.size, threshold)
        png = mask_png(mask)
        overlay = overlay_jpeg(decoded.data, mask) if photo.overlay else None
        foreground = round(float(np.count_nonzero(mask)) / max(mask.size, 1), 4)
        del mask
    write_bytes(photo.mask, png)
    if overlay is not None:
        write_bytes(photo.overlay, overlay)
    return {"photo": photo.rel, "mask": os.path.splitext(photo.rel)[0] + ".png", "size": list(decoded.size),
            "foreground": foreground}


class PhotoSegmenter:
    """A segmenter loaded once, with what it takes to turn photos into mask files. Used in this
    process (--workers 0) and as the Ray actor of each worker (--workers N)."""

    def __init__(self, segmenter_url: str, settings: Settings, artifact: bytes | None = None):
        """`artifact`: the file's bytes when the caller has read them already; a Ray worker reads
        the URL itself, so a restarted worker needs nothing from the driver."""
        self.settings = settings
        data = artifact if artifact is not None else read_bytes(segmenter_url)
        net, model = load_segmenter(from_bytes(data, what=segmenter_url), what=segmenter_url)
        self.device = resolve_device(settings.device)
        self.net = net.to(self.device)
        self.resolution = model.resolution

    def ready(self) -> bool:
        """Answers once the segmenter is loaded: the driver waits for this from every Ray worker."""
        return True

    @torch.no_grad()
    def probabilities(self, batch: list[Decoded]) -> torch.Tensor:
        """[B, 1, r, r] mask probabilities, on the CPU."""
        images = to_input([d.pixels for d in batch]).to(self.device)  # already at the segmenter's square
        return inference.probabilities(self.net, images, self.resolution, self.settings.flip,
                                       self.settings.colour).float().cpu()

    def segment(self, photos: list[Photo], on_batch: Callable[[Outcome], None] | None = None) -> Outcome:
        """Segment `photos`, writing their masks (and overlays). `on_batch(part)` is called as each
        batch's files are written, with the photos of that batch segmented and skipped.

        Memory is bounded whatever the photos' size: full-size pixel work (upsampled masks, decoded
        photos for overlays) runs in at most FULL_SIZE_AT_ONCE threads, and the network waits while
        too many photos are queued for the writers (with overlays each holds its file's bytes)."""
        s, outcome = self.settings, Outcome()
        readers = ThreadPoolExecutor(s.io_threads, thread_name_prefix="read")
        writers = ThreadPoolExecutor(s.io_threads, thread_name_prefix="write")
        full_size = threading.Semaphore(FULL_SIZE_AT_ONCE)
        queued = threading.Semaphore(2 * max(s.io_threads, FULL_SIZE_AT_ONCE) if s.overlays else 2 * s.batch)

        def submit(photo: Photo, prob: torch.Tensor, d: Decoded):
            queued.acquire()  # the bounded queue between the network and the writers
            future = writers.submit(_write, photo, prob, d, s.threshold, full_size)
            future.add_done_callback(lambda _: queued.release())
            return future

        def finish(writes: list, skipped: list[dict]) -> None:
            part = Outcome([w.result() for w in writes], skipped)
            outcome.add(part)
            if on_batch is not None and (writes or skipped):
                on_batch(part)

        try:
            decoded = _ordered(readers, lambda p: _read_and_squash(p, self.resolution, s.overlays), photos,
                               ahead=s.batch if s.overlays else 2 * s.batch)
            previous: tuple[list, list] = ([], [])
            pairs = zip(photos, decoded)
            while batch := list(itertools.islice(pairs, s.batch)):
                ok = [(p, d) for p, d in batch if isinstance(d, Decoded)]
                skipped = [{"photo": p.rel, "reason": d} for p, d in batch if isinstance(d, str)]
                probs = self.probabilities([d for _, d in ok]) if ok else None
                finish(*previous)  # the batch before's writes: at most two batches held at a time
                previous = ([submit(p, probs[i], d) for i, (p, d) in enumerate(ok)], skipped)
            finish(*previous)
        finally:
            readers.shutdown(wait=True, cancel_futures=True)
            writers.shutdown(wait=True, cancel_futures=True)
        return outcome


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


def _on_ray(photos: list[Photo], segmenter_url: str, settings: Settings, workers: int,
            cpus_per_worker: float, gpus_per_worker: float, on_batch, note: Callable[[str], None],
            placement_timeout: float = PLACEMENT_TIMEOUT) -> Outcome:
    """Chunks of the photo list, handed to `workers` actors as each finishes its last one."""
    import ray
    from ray.exceptions import RayError, RayTaskError
    from ray.util import ActorPool

    local = placement.init_ray()
    short = placement.shortfall(placement.alive_nodes(), workers, cpus_per_worker, gpus_per_worker,
                                f"--workers {workers}")
    if short and local:  # a cluster started here has all the nodes it will ever have
        raise SegmentError(f"{short}; use fewer --workers or smaller --cpus-per-worker / --gpus-per-worker")
    if short:
        note(f"note: {short}; waiting up to {placement_timeout:g}s (--placement-timeout) for the cluster "
             "to add nodes")
    if not local:
        local_paths = [u for u in (segmenter_url, photos[0].url, photos[0].mask) if is_local_path(u)]
        if local_paths:
            note(f"note: {local_paths[0]} is a local path: every node of the Ray cluster must see it there "
                 "(keep the segmenter, photos and --out on s3://... for a multi-node cluster)")
    worker_settings = dataclasses.replace(settings, device="cuda" if gpus_per_worker else "cpu")
    actor_class = ray.remote(PhotoSegmenter).options(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker,
                                                     max_restarts=1, max_task_retries=1)
    actors = [actor_class.remote(segmenter_url, worker_settings) for _ in range(workers)]
    size = 4 * settings.batch  # a multiple of the batch: the same batches as in one process
    chunks = [photos[i:i + size] for i in range(0, len(photos), size)]
    outcome = Outcome()
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
            outcome.add(part)
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
    order = {p.rel: i for i, p in enumerate(photos)}
    outcome.segmented.sort(key=lambda d: order[d["photo"]])
    outcome.skipped.sort(key=lambda d: order[d["photo"]])
    return outcome


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

    def note(line: str) -> None:
        line = redact(line)  # photo URLs without their credentials
        bar.note(line) if progress else print(line, file=stream, flush=True)

    def on_batch(part: Outcome) -> None:
        for line in skipped_warnings(len(report.done.skipped), part.skipped):
            note(line)
        bar.advance(len(part.segmented) + len(part.skipped))
        report.add(part)

    if resumed:
        note(f"resuming: {len(resumed)} of {len(photos)} photos already have their mask in {out_url}")
    try:
        if todo and workers == 0:
            PhotoSegmenter(segmenter_url, settings, artifact).segment(todo, on_batch)
        elif todo:
            _on_ray(todo, segmenter_url, settings, workers, cpus_per_worker, gpus_per_worker, on_batch, note,
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
