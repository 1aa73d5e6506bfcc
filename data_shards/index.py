"""Which shards a dataset URL names, and how many samples each holds: the manifest the readers
plan from (reader.py), whether the set was written by writer.py or is plain WebDataset tars.

A dataset URL is one of
- a folder with manifest.json: a set written by writer.py, or plain tars indexed in place by
  `jobs/make_shards.py index` (write_index);
- a folder of plain WebDataset tars without one (img2dataset, webdataset's TarWriter and
  ShardWriter, other projects): its *.tar files in name order;
- a brace pattern or a single tar: s3://bucket/photos-{000000..000199}.tar, /data/x/shard-0003.tar.
  Its shards are the expanded URLs that exist (missing ones are warned about and left out); a
  manifest.json of ours in the pattern's folder is used when it lists exactly those shards.
Shards without a manifest are indexed on the fly: every tar's headers are read (tarfile seeks over
the file data; no image is decoded) and grouped into samples by webdataset's own group_by_keys, as
the reader groups them, giving an in-memory manifest of the same shape as ours (per-shard counts,
has_masks), so positions, the rank split and exact resume work unchanged. Each process indexes a
set once; a big set is worth indexing once and for all with `jobs/make_shards.py index URL`.
An indexed manifest says "indexed": true and records the image and mask fields it found; it has
no resolution statistics (nothing was decoded), so readers of it need a target resolution.

Shard names in a manifest are relative to the set's root (set_root): the folder itself or, for a
pattern, the folder before its first brace, so shard_urls gives back the very URLs a pattern names.

A folder of our writer's shard-NNNNNN.tar files without manifest.json is a write that was cut off
or is still running (writer.py deletes the manifest before replacing a shard): it is refused, not
indexed, so that a reader never mixes old and new shards.
"""
from __future__ import annotations

import copy
import datetime
import json
import logging
import re
import shlex
import tarfile
import zlib
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

from braceexpand import braceexpand
from webdataset.tariterators import group_by_keys

from comgan.errors import UserError  # the one import from comgan/ (docs/DESIGN.md, section 2)
from data_shards.converters import IMAGE_SUFFIXES
from data_shards.io import (
    filesystem,
    join_url,
    list_sizes,
    list_tree,
    open_url,
    read_bytes,
    redact,
    url_exists,
    write_bytes,
)
from data_shards.progress import Progress
from data_shards.writer import FORMAT, MANIFEST, SHARD_RE, DestinationExists

# Where a sample's image and mask may sit, in order of preference: our writer's fields first, then
# the usual WebDataset ones (img2dataset and most ShardWriter scripts store KEY.jpg + KEY.json).
IMAGE_KEYS = ("image.png", "image.jpg", "image.jpeg", "image.webp", "jpg", "jpeg", "png", "webp")
MASK_KEYS = ("mask.png", "mask.jpg", "mask.jpeg", "mask.webp")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")   # a URL ending so names a shard, not a folder
INDEX_THREADS = 8       # tars indexed at once: the work is waiting on storage, not computing
PROGRESS_FROM = 20      # shards: fewer are indexed in moments, without a progress line
FIELDS_KEPT = 50        # the most common fields an indexed manifest lists (odd sets have many)
_SKIP_META = re.compile(r"__[^/]*__($|/)")   # entries webdataset's tar_file_iterator skips

logger = logging.getLogger("data_shards")


def _either(keys: tuple) -> str:
    return ", ".join(keys[:-1]) + " or " + keys[-1]


IMAGE_WANTED = "an image in " + _either(IMAGE_KEYS)
EVAL_WANTED = f"{IMAGE_WANTED}, and a mask in {_either(MASK_KEYS)}"


class DatasetError(UserError, ValueError):  # ValueError: what tests/data_shards/test_shards.py checks
    """A problem with a shard set that the user has to fix; the message is one line."""

    def __init__(self, message: str = ""):
        # torch's DataLoader re-raises a worker's exception as type(e)("Caught X in DataLoader
        # worker process N.\nOriginal Traceback ..."): keep the worker's one line, and where.
        head = f"Caught {type(self).__name__} "
        if message.startswith(head) and "\n" in message:
            where, _, rest = message[len(head):].partition(".\n")
            last = rest.rstrip().splitlines()[-1]
            message = f"{last.partition(': ')[2]} ({where})"
        super().__init__(message)


# ---------------------------------------------------------------------------------------------
# URLs

def is_shard_list(url: str) -> bool:
    """Whether `url` names shards itself (a brace pattern or a tar) rather than a folder."""
    return url.endswith(TAR_SUFFIXES) or list(braceexpand(url)) != [url]


def _cut(url: str) -> int:
    """Where shard names start in a pattern or tar URL: after the last "/" before any brace."""
    return url.split("{", 1)[0].rfind("/") + 1


def set_root(url: str) -> str:
    """The folder a set's shard names (and its manifest.json) are relative to."""
    return (url[:_cut(url)] or "./") if is_shard_list(url) else url


def _pattern_names(url: str) -> list[str]:
    return list(dict.fromkeys(u[_cut(url):] for u in braceexpand(url)))  # "{a,a}" names one shard


def shard_urls(url: str, manifest: dict) -> list[str]:
    root = set_root(url)
    return [join_url(root, s["name"]) for s in manifest["shards"]]


# ---------------------------------------------------------------------------------------------
# the manifest of a URL

def _checked(murl: str, raw: bytes) -> dict:
    try:
        manifest = json.loads(raw)
    except ValueError as e:
        raise DatasetError(f"{murl} is not valid JSON: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DatasetError(f"{murl} is not a {FORMAT} manifest (to read the tars beside it without it, "
                           "name them with a brace pattern: .../name-{0000..0099}.tar)")
    if not manifest.get("shards"):
        raise DatasetError(f"{murl} lists no shards")
    if int(manifest.get("num_samples", 0)) <= 0:
        raise DatasetError(f"{murl} lists zero samples")
    return manifest


def read_manifest(url: str) -> dict:
    """The manifest of the set `url` names (see the module docstring), checked enough to stream
    from it: manifest.json where it applies, else an index of the tars made in memory."""
    if is_shard_list(url):
        sizes = _pattern_sizes(url)
        stored = _stored_manifest(set_root(url))
        if stored is not None and sorted(s["name"] for s in stored["shards"]) == sorted(sizes):
            return stored
        return _indexed(url, set_root(url), sizes)
    murl = join_url(url, MANIFEST)
    try:
        raw = read_bytes(murl)
    except FileNotFoundError:
        return _indexed(url, url, _folder_sizes(url))
    return _checked(murl, raw)


def _stored_manifest(root: str) -> dict | None:
    """The manifest.json in a pattern's folder if it is one of ours; None (index) otherwise: the
    user named the shards, so a foreign or broken manifest beside them is not theirs to fix."""
    try:
        return _checked(join_url(root, MANIFEST), read_bytes(join_url(root, MANIFEST)))
    except (FileNotFoundError, DatasetError):
        return None


def _folder_sizes(url: str) -> dict[str, int]:
    """{name: bytes} of the folder's *.tar files; DatasetError when there are none."""
    sizes = {u.rsplit("/", 1)[-1]: n for u, n in list_sizes(url, ".tar").items()}
    if sizes:
        return sizes
    fs, path = filesystem(url)
    if "://" not in url and not fs.exists(path):  # object stores have prefixes, not folders
        raise DatasetError(f"no shard dataset at {url}: the folder does not exist (write shards of a folder of "
                           f"photos there with python jobs/make_shards.py folder PHOTOS {shlex.quote(url)})")
    if any(rel.lower().endswith(IMAGE_SUFFIXES) for rel in list_tree(url)):
        shards = url.rstrip("/") + "-shards"
        raise DatasetError(f"no shard dataset at {url}: it holds images, not shards; make shards of them with "
                           f"python jobs/make_shards.py folder {shlex.quote(url)} {shlex.quote(shards)} (add "
                           f"--masks MASKS for masks) and use {shards}")
    raise DatasetError(f"no shard dataset at {url}: manifest.json not found and no .tar files in it (write shards "
                       "with jobs/make_shards.py, or name existing tars with a brace pattern: .../x-{0000..0099}.tar)")


def _pattern_sizes(url: str) -> dict[str, int]:
    """{name: bytes} of the shards a pattern names that exist, from one listing per folder;
    DatasetError when none does, a warning for those missing."""
    root, names = set_root(url), _pattern_names(url)
    sizes, listed = {}, {}
    for name in names:
        folder, _, base = name.rpartition("/")
        if folder not in listed:
            found = list_sizes(join_url(root, folder) if folder else root)
            listed[folder] = {u.rsplit("/", 1)[-1]: n for u, n in found.items()}
        if base in listed[folder]:
            sizes[name] = listed[folder][base]
    if not sizes:
        raise DatasetError(f"{url} matches no existing shard (it names {len(names)}, the first "
                           f"{join_url(root, names[0])})")
    missing = [n for n in names if n not in sizes]
    if missing:
        logger.warning("%s: %d of the %d shards it names do not exist and are left out (the first: %s)",
                       url, len(missing), len(names), missing[0])
    return sizes


_INDEXED: dict = {}   # (url, ((name, bytes), ...)) -> manifest: a process indexes a set once, not per reader


def _indexed(url: str, root: str, sizes: dict[str, int]) -> dict:
    """The in-memory manifest of shards that have none (module docstring). A listing that changed
    (shards added, removed or of another size) is indexed anew."""
    key = (url, tuple(sizes.items()))
    if key not in _INDEXED:
        if _unfinished_write(root, list(sizes)):
            raise DatasetError(f"{url} holds shards of jobs/make_shards.py but no manifest.json: a write that was cut "
                               f"off or is still running; re-run that write (or jobs/make_shards.py index '{url}' to "
                               "use the shards as they are)")
        logger.warning("indexing the %d shard(s) of %s from their tar headers (no manifest.json lists them); for "
                       "a big set run `python jobs/make_shards.py index '%s'` once so that runs start without this",
                       len(sizes), url, url)
        _INDEXED[key] = index_shards(url, root, sizes, progress=len(sizes) >= PROGRESS_FROM)
    return copy.deepcopy(_INDEXED[key])


def holds_shards(url: str) -> bool:
    """Whether `url` already names data, so that nothing may be written there: a pattern or a
    tar, a folder with manifest.json, or a folder of tars other than an unfinished write of ours."""
    if is_shard_list(url) or url_exists(join_url(url, MANIFEST)):
        return True
    names = [u.rsplit("/", 1)[-1] for u in list_sizes(url, ".tar")]
    return bool(names) and not _unfinished_write(url, names)


# ---------------------------------------------------------------------------------------------
# indexing: samples per tar from its headers

_DAMAGE = (tarfile.TarError, EOFError, zlib.error)   # what the reader counts as a truncated shard


class _Count(NamedTuple):
    samples: int
    masks: int          # samples with a mask under one of MASK_KEYS
    fields: Counter     # field name -> samples that have it


def _tar_files(url: str) -> Iterator[dict]:
    """The regular files of a tar as webdataset's tar_file_expander hands them to group_by_keys
    in the reader, but without their data: in random-access mode tarfile seeks over it."""
    with open_url(url) as stream, tarfile.open(fileobj=stream, mode="r:*") as tar:
        while (info := tar.next()) is not None:
            tar.members = []  # nothing is looked up later: memory stays flat on big shards
            if info.isreg() and not _SKIP_META.match(info.name):
                yield {"fname": info.name, "data": b"", "__url__": url}


def count_shard(url: str) -> _Count:
    """The samples of one tar as the reader will see them; a damaged tar counts those before the
    damage, which is what the reader reads of it."""
    samples, masks, fields = 0, 0, Counter()
    try:
        for sample in group_by_keys(_tar_files(url)):
            samples += 1
            masks += any(k in sample for k in MASK_KEYS)
            fields.update(k for k in sample if not k.startswith("__"))
    except FileNotFoundError:
        raise DatasetError(f"{url} disappeared while its set was indexed") from None
    except _DAMAGE as e:
        logger.warning("%s is damaged after %d samples (%s): readers skip the rest", url, samples, e)
    return _Count(samples, masks, fields)


def _unfinished_write(root: str, names: list[str]) -> bool:
    """Our writer's shards without their manifest: all named shard-NNNNNN.tar, the first sample's
    image stored as image.<ext> (plain sets store it as jpg, png, ...), no manifest.json in root
    (a pattern naming some shards of a complete set of ours is no unfinished write)."""
    if not names or not all(SHARD_RE.match(n) for n in names) or url_exists(join_url(root, MANIFEST)):
        return False
    samples = group_by_keys(_tar_files(join_url(root, names[0])))
    try:
        first = next(samples, {})
    except (FileNotFoundError, *_DAMAGE):
        return False
    finally:
        samples.close()
    return any(k.startswith("image.") for k in first)


def index_shards(url: str, root: str, sizes: dict[str, int], progress: bool | Progress = False) -> dict:
    """A manifest for the shards `sizes` names ({name relative to root: bytes}), counted from
    their headers; DatasetError when they hold no sample or no image under IMAGE_KEYS."""
    if not isinstance(progress, Progress):
        progress = Progress(label=f"indexing {url}", unit="shards", enabled=bool(progress))
    progress.total = len(sizes)
    counts = []
    with ThreadPoolExecutor(min(INDEX_THREADS, len(sizes))) as pool:
        for count in pool.map(count_shard, [join_url(root, n) for n in sizes]):
            counts.append(count)
            progress.advance()
    progress.close()
    fields = sum((c.fields for c in counts), Counter())
    total, masks = sum(c.samples for c in counts), sum(c.masks for c in counts)
    if not total:
        raise DatasetError(f"{url}: its {len(sizes)} shard(s) hold no samples")
    images = [k for k in IMAGE_KEYS if fields[k]]
    if not images:
        seen = ", ".join(sorted(fields)[:FIELDS_KEPT]) or "none"
        raise DatasetError(f"{url}: none of its {total} samples has an image; fields seen: {seen}; "
                           f"the reader looks for {IMAGE_WANTED}")
    return {
        "format": FORMAT,
        "indexed": True,            # counted from the tars in place; nothing was decoded or copied
        "source": redact(url),     # without user:password@ or a presigned signature
        "num_samples": total,
        "has_masks": masks == total,
        "num_masks": masks,
        "image_keys": {k: fields[k] for k in images},
        "mask_keys": {k: fields[k] for k in MASK_KEYS if fields[k]},
        "fields": dict(fields.most_common(FIELDS_KEPT)),
        "shards": [{"name": n, "num_samples": c.samples, "num_masks": c.masks, "bytes": b}
                   for (n, b), c in zip(sizes.items(), counts)],
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def write_index(url: str, overwrite: bool = False, progress: bool | Progress = True) -> tuple[dict, str]:
    """Index the plain tars `url` names (a folder, a brace pattern or a tar) and write the
    manifest into the set's root, beside them; no shard is copied or changed. Returns (manifest,
    its URL). An existing manifest.json is replaced only with `overwrite` (else DestinationExists)."""
    root = set_root(url)
    murl = join_url(root, MANIFEST)
    if not overwrite and url_exists(murl):
        raise DestinationExists(f"{murl} already exists; use --overwrite to replace it")
    sizes = _pattern_sizes(url) if is_shard_list(url) else _folder_sizes(url)
    manifest = index_shards(url, root, sizes, progress)
    write_bytes(murl, json.dumps(manifest, indent=1).encode())
    return manifest, murl
