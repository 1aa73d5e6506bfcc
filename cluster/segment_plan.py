"""The plan of a photo segmentation job (cluster/segment_images.py) and its record, on URLs alone (no
Ray, no model): which photos there are, the files each one becomes, which of those are there
already (--overwrite, --resume), and the report written as the job goes.

Layout of the output folder (any URL), for a photo at <photos>/<dir>/<name>.<ext>:
    <out>/<dir>/<name>.png             the mask: 8-bit grey (mode L), 0 background / 255 foreground,
                                       at the photo's displayed size (EXIF orientation applied)
    <out>/overlays/<dir>/<name>.jpg    with overlays: the photo, background dimmed to a third
    <out>/segment_report.json          settings, timing, and every photo segmented or skipped (why);
                                       written as the job goes ("complete": false until the end)
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

from comgan.errors import UserError
from data_shards.io import filesystem, join_url, list_tree, read_bytes, redacted, url_kind, write_bytes

from .storage import absolute_url

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
REPORT = "segment_report.json"
OVERLAYS = "overlays"


class SegmentError(UserError):
    """A mistake in the command or its inputs; the message is one line for the user."""


@dataclass(frozen=True)
class Photo:
    url: str                  # where the photo is read
    rel: str                  # its path under the photos folder: the name used in reports
    mask: str                 # URL its mask is written to
    overlay: str | None       # URL of its overlay JPEG (with overlays)


@dataclass
class Outcome:
    segmented: list[dict] = field(default_factory=list)   # {"photo", "mask", "size": [w, h], "foreground"}
    skipped: list[dict] = field(default_factory=list)     # {"photo", "reason"}

    def add(self, other: Outcome) -> None:
        self.segmented += other.segmented
        self.skipped += other.skipped


# ---------------------------------------------------------------------------------------------
# which photos, and the files they become

def _fs_path(url: str) -> tuple[str, str]:
    fs, path = filesystem(url)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol, path.rstrip("/")


def _within(inner: str, outer: str) -> bool:
    """Folder `inner` is `outer` or lies inside it (same filesystem)."""
    (pi, i), (po, o) = _fs_path(inner), _fs_path(outer)
    return pi == po and (i == o or i.startswith(o + "/"))


def plan(photos_url: str, out_url: str, overlays: bool = False) -> list[Photo]:
    """Every photo under `photos_url` with the files it becomes under `out_url`; one-line
    SegmentErrors for a missing or empty source, an output folder inside it, or two photos that
    would write the same mask."""
    photos_url, out_url = absolute_url(photos_url), absolute_url(out_url)
    kind = url_kind(photos_url)
    if kind != "folder":
        raise SegmentError(f"photos {photos_url} {'is a file, not a folder' if kind else 'does not exist'}")
    if _within(out_url, photos_url):
        raise SegmentError(f"--out {out_url} lies inside the photos folder {photos_url}: its masks would be "
                           "taken for photos next time; write them elsewhere")
    rels = [r for r in list_tree(photos_url) if r.lower().endswith(PHOTO_SUFFIXES)]
    if not rels:
        raise SegmentError(f"no photos in {photos_url} (looked for {', '.join(PHOTO_SUFFIXES)}, "
                           "any case, in all sub-folders)")
    plans, stems = [], {}
    for rel in rels:
        stem = os.path.splitext(rel)[0]
        if stem in stems:
            raise SegmentError(f"{stems[stem]!r} and {rel!r} would both write the mask {stem}.png; rename one")
        stems[stem] = rel
        plans.append(Photo(join_url(photos_url, rel), rel, join_url(out_url, stem + ".png"),
                           join_url(out_url, OVERLAYS, stem + ".jpg") if overlays else None))
    sources = {p.url for p in plans}
    clash = next((p.mask for p in plans if p.mask in sources), None)
    if clash:
        raise SegmentError(f"the mask {clash} would replace a photo; choose another --out")
    return plans


# ---------------------------------------------------------------------------------------------
# what is there already: --overwrite, --resume

def existing_outputs(photos: list[Photo], out_url: str) -> list[str]:
    """The outputs of this plan (masks, overlays, report) that are already there: one listing of
    the output folder, not a request per file."""
    out_url = absolute_url(out_url)
    if url_kind(out_url) == "file":
        raise SegmentError(f"--out {out_url} is a file, not a folder")
    there = {join_url(out_url, rel) for rel in list_tree(out_url)}
    targets = [t for p in photos for t in (p.mask, p.overlay) if t] + [join_url(out_url, REPORT)]
    return [t for t in targets if t in there]


def still_to_do(photos: list[Photo], out_url: str, overwrite: bool, resume: bool) -> tuple[list[Photo], list[dict]]:
    """(the photos to segment, report entries of those an earlier run did): with `resume` those
    whose outputs are there are left out; without it or `overwrite`, outputs already there are a
    SegmentError, before anything is written."""
    if resume:
        return already_done(photos, out_url)
    if not overwrite:
        existing = existing_outputs(photos, out_url)
        if existing:
            raise SegmentError(f"{len(existing)} output file(s) already exist, e.g. {existing[0]}; "
                               "use --overwrite to replace them, or --resume to continue")
    return photos, []


def already_done(photos: list[Photo], out_url: str) -> tuple[list[Photo], list[dict]]:
    """(the photos still to do, report entries of those done before): a photo is done when its mask,
    and with overlays its overlay, is in `out_url` (one listing). Entries come from the report
    there when it has them, else they name the photo and its mask; all are marked "resumed"."""
    there = set(existing_outputs(photos, out_url))
    previous = {}
    report_url = join_url(out_url, REPORT)
    if report_url in there:
        try:
            previous = {e["photo"]: e for e in json.loads(read_bytes(report_url)).get("segmented", [])
                        if isinstance(e, dict) and "photo" in e}
        except (ValueError, TypeError, AttributeError):  # a damaged report: the masks are what counts
            previous = {}
    todo, resumed = [], []
    for p in photos:
        if p.mask in there and (p.overlay is None or p.overlay in there):
            entry = previous.get(p.rel) or {"photo": p.rel, "mask": os.path.splitext(p.rel)[0] + ".png"}
            resumed.append({**entry, "resumed": True})
        else:
            todo.append(p)
    return todo, resumed


# ---------------------------------------------------------------------------------------------
# the report

class JobReport:
    """segment_report.json of one job, written as the job goes: after the first batch, then every
    `every` photos, and at the end ("complete": true); the caller writes it once more when the job
    stops with photos unreported (`unreported`). A job killed outright runs no handler, so what was
    written must already be on disk. Photos done by an earlier run (`resumed`) count among the
    segmented from the start."""

    def __init__(self, url: str, head: dict, photos: list[Photo], resumed: list[dict], every: int,
                 job_started: float):
        self.url, self.head, self.every, self.job_started = url, head, every, job_started
        self.num_photos, self.num_resumed = len(photos), len(resumed)
        self.order = {p.rel: i for i, p in enumerate(photos)}
        self.done = Outcome(list(resumed), [])  # everything so far
        self.work_started = time.monotonic()
        self.unreported = 0                     # photos done since the report was last written
        self.written = False

    def add(self, part: Outcome) -> None:
        self.done.add(part)
        self.unreported += len(part.segmented) + len(part.skipped)
        if not self.written or self.unreported >= self.every:
            self.write(complete=False)

    def write(self, complete: bool) -> dict:
        """Write the report; returns it (with the URLs as given: only the file is redacted)."""
        document = self.document(complete)
        write_bytes(self.url, report_json(redacted(document)).encode())  # URLs without credentials
        self.unreported, self.written = 0, True
        return document

    def document(self, complete: bool) -> dict:
        seconds = time.monotonic() - self.work_started
        new = len(self.done.segmented) - self.num_resumed
        return {
            **self.head,  # photos, segmenter, out, settings
            "complete": complete,
            "num_photos": self.num_photos, "num_segmented": len(self.done.segmented),
            "num_skipped": len(self.done.skipped), "num_resumed": self.num_resumed,
            "seconds": round(seconds, 3), "total_seconds": round(time.monotonic() - self.job_started, 3),
            "photos_per_second": round(new / max(seconds, 1e-6), 2),
            "segmented": self._in_photo_order(self.done.segmented),
            "skipped": self._in_photo_order(self.done.skipped),
        }

    def _in_photo_order(self, entries: list[dict]) -> list[dict]:
        return sorted(entries, key=lambda d: self.order.get(d["photo"], len(self.order)))


def report_json(report: dict) -> str:
    """JSON with one line per photo: readable, and short enough for a hundred thousand photos."""
    lists = ("segmented", "skipped")
    head = json.dumps({k: v for k, v in report.items() if k not in lists}, indent=1)[:-2]
    parts = [f' "{key}": [' + ",".join("\n  " + json.dumps(entry) for entry in report[key]) + "\n ]"
             for key in lists]
    return head + ",\n" + ",\n".join(parts) + "\n}\n"


def summary(report: dict) -> str:
    skipped = f" ({report['num_skipped']} skipped, listed in the report)" if report["num_skipped"] else ""
    if report.get("num_resumed"):
        skipped += f" ({report['num_resumed']} done by an earlier run)"
    return (f"segmented {report['num_segmented']} of {report['num_photos']} photos{skipped} in "
            f"{report['seconds']:.1f}s, {report['photos_per_second']:.1f} photos/s; masks in {report['out']}, "
            f"report {join_url(report['out'], REPORT)}")
