"""Photos to mask files with one loaded segmenter: read, decode, predict, write. No Ray here:
cluster/segment_images.py runs a `PhotoSegmenter` in its own process (--workers 0) or as the Ray
actor of each worker (--workers N); both write the same files.

Geometry: a segmenter sees square images at its own resolution, so each photo is resized (squashed,
not cropped, so every pixel gets a mask) to that square, its mask probabilities are upsampled
bilinearly back to the photo's own size and thresholded there, as cluster/evaluate.py scores at a
larger size than the model's. Photos that cannot be read or decoded are reported and skipped.
Reads and decodes run in a thread pool ahead of the network, mask upsampling/encoding/writes in
another behind it.
"""
from __future__ import annotations

import contextlib
import io
import itertools
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from comgan import inference
from comgan.artifacts import from_bytes, load_segmenter
from data_shards.images import open_photo, squashed_photo, to_rgb8
from data_shards.io import StorageError, is_local_path, read_bytes, write_bytes

from .segment_plan import Outcome, Photo, SegmentError
from .storage import read_artifact

BACKGROUND_DIM = 1 / 3   # overlays: background brightness
FULL_SIZE_AT_ONCE = 2    # photos whose full-size mask / overlay is computed at once (a 48 MP one: ~0.7 GB)


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
# the segmenter

def read_segmenter(url: str) -> tuple[bytes, int]:
    """(artifact bytes, the segmenter's resolution), after checking that the file is a segmenter."""
    data = read_artifact(url, "segmenter")
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
