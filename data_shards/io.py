"""The one way the project opens a URL: a local path, file://..., s3://... or any fsspec protocol.

Credentials and endpoints are never passed in code. For S3 they come from the standard AWS
environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_PROFILE, AWS_ENDPOINT_URL for a
non-AWS server such as MinIO or moto) or from fsspec's own config (FSSPEC_S3_ENDPOINT_URL=...).

Functions take and return URLs in the form the caller used: a plain path stays a plain path and
s3://bucket/key keeps its scheme. A URL may still carry credentials (user:password@host, the
signature of a presigned URL): whatever the project writes to a file or prints passes through
`redact` (one string, a URL or a line holding URLs) or `redacted` (a config or report, nested),
so those reach no config.yaml, report, manifest or log; the caller keeps the real URL to open.

Explicit, non-secret options (an endpoint, a region, a profile name) can be set once per process
with `configure_s3`; the run config's `storage` section does that on the driver and in every
worker. Storage failures that a user has to fix (no such bucket, access denied, no credentials,
an endpoint that does not answer) surface as one-line `StorageError`s that name the URL.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import re
import stat
import uuid
from contextlib import contextmanager
from typing import Iterator

import fsspec

from comgan.errors import UserError  # the one import from comgan/ (docs/DESIGN.md, section 2)

_S3_OPTIONS: dict = {}


class StorageError(UserError, OSError):  # OSError: the jobs and cluster/checkpoints.py catch it as one
    """Storage that cannot be used as configured; the message is one line for the user."""


# Credentials a URL can carry: user:password@ (or a bare token@) before the host, and the query
# parameters of presigned URLs that hold a signature, key id or session token (S3 SigV4 and V2,
# GCS, Azure SAS, a generic token=). Their values become REDACTED; the rest of the URL stays
# readable. Userinfo holds no / ? # @ (RFC 3986), so a later "@" in a path or query is left alone.
REDACTED = "REDACTED"
SECRET_QUERY_KEYS = ("X-Amz-Signature", "X-Amz-Credential", "X-Amz-Security-Token", "Signature", "AWSAccessKeyId",
                     "X-Goog-Signature", "X-Goog-Credential", "sig", "token", "access_token")
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^\s/?#@'\"<>]*@")
_SECRET_QUERY = re.compile(r"([?&;](?:%s)=)[^&#\s'\"<>]*" % "|".join(map(re.escape, SECRET_QUERY_KEYS)),
                           re.IGNORECASE)


def redact(text: str) -> str:
    """`text` (a URL, or a line or document holding URLs) with every URL's credentials replaced
    by REDACTED: s3://AKIA:secret@bucket/x -> s3://REDACTED@bucket/x, and
    https://h/x?X-Amz-Signature=abc&y=1 -> https://h/x?X-Amz-Signature=REDACTED&y=1."""
    if "://" not in text and "=" not in text:
        return text
    return _SECRET_QUERY.sub(rf"\g<1>{REDACTED}", _USERINFO.sub(rf"\g<1>{REDACTED}@", text))


def redacted(value):
    """A copy of a config or report (dicts, lists, tuples, scalars) with `redact` applied to every
    string in it; what is not a string is returned as it is."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redacted(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redacted(v) for v in value)
    return value


class RedactingFilter(logging.Filter):
    """Log records with `redact` applied to their message (arguments formatted in)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        record.msg, record.args = redact(message), None
        return True


# The data layer's warnings (reader, indexer) name shard URLs.
logging.getLogger("data_shards").addFilter(RedactingFilter())


def configure_s3(endpoint_url: str = "", region: str = "", profile: str = "", anonymous: bool = False) -> None:
    """Set this process's explicit S3 options; empty values leave the AWS defaults in charge.
    Never pass credentials here: they come from the environment, a profile or an instance role."""
    _S3_OPTIONS.clear()
    if endpoint_url:
        _S3_OPTIONS["endpoint_url"] = endpoint_url
    if region:
        _S3_OPTIONS["client_kwargs"] = {"region_name": region}
    if profile:
        _S3_OPTIONS["profile"] = profile
    if anonymous:
        _S3_OPTIONS["anon"] = True


def is_local_path(url: str) -> bool:
    """A path on this machine: no scheme, or file://."""
    return "://" not in url or url.startswith("file://")


def filesystem(url: str, **storage_options) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) for a URL. fsspec caches instances per process and drops them
    after a fork, so calling this inside a DataLoader worker gives that worker its own client.
    A scheme fsspec does not know, or whose package is not installed, is a StorageError."""
    if url.startswith(("s3://", "s3a://")):
        storage_options = {**_S3_OPTIONS, **storage_options}
    try:
        return fsspec.core.url_to_fs(url, **storage_options)
    except ValueError as e:
        if not str(e).startswith("Protocol not known"):
            raise
        raise StorageError(_unknown_scheme(url)) from None
    except ImportError as e:  # a scheme fsspec knows whose package is missing (gs:// without gcsfs)
        raise StorageError(f"{url}: {str(e).splitlines()[0]}") from None


def _unknown_scheme(url: str) -> str:
    # Every scheme that would work, so that a typo (s4://) and a missing one can be told apart.
    scheme = url.split("://", 1)[0].split("::")[-1]
    others = ", ".join(p for p in fsspec.available_protocols() if p not in ("file", "local", "s3"))
    return (f"{url}: unknown URL scheme {scheme!r}; use a local path, file://..., s3://bucket/... or another "
            f"scheme fsspec knows: {others}")


def storage_error(url: str, error: BaseException) -> StorageError | None:
    """The user-facing form of a storage failure, or None for anything else (a missing object
    stays a FileNotFoundError for the caller to explain). Matched by class name so that this
    module needs neither botocore nor aiohttp."""
    names = {c.__name__ for c in type(error).__mro__}
    bucket = url.split("://", 1)[-1].split("/", 1)[0]
    text = str(error)
    if isinstance(error, StorageError):
        return error
    if isinstance(error, FileNotFoundError) and "bucket does not exist" in text.lower():
        return StorageError(f"{url}: bucket {bucket!r} does not exist")
    if isinstance(error, NotADirectoryError):  # a file lies where a folder of the path must be
        blocker = _file_in_the_way(url)
        return StorageError(f"{url}: {blocker or 'a part of it'} is a file, not a folder")
    if isinstance(error, PermissionError):
        detail = text.splitlines()[0] if text else "no detail"
        if is_local_path(url):
            return StorageError(f"{url}: permission denied ({detail})")
        return StorageError(f"{url}: access denied ({detail}); check the credentials (AWS environment, "
                            "AWS_PROFILE or instance role) and the bucket policy")
    if "NoCredentialsError" in names:
        return StorageError(f"{url}: no AWS credentials found; set AWS_PROFILE or AWS_ACCESS_KEY_ID/"
                            "AWS_SECRET_ACCESS_KEY, or run where an instance role provides them")
    if names & {"EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError", "ConnectionRefusedError",
                "ServerTimeoutError"} or isinstance(error, (ConnectionError, TimeoutError)):
        endpoint = _S3_OPTIONS.get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL_S3") \
            or os.environ.get("AWS_ENDPOINT_URL") or "the default AWS endpoint"
        return StorageError(f"{url}: cannot reach the storage endpoint ({endpoint}): {text.splitlines()[0]}")
    return None


def _user_errors(fn):
    """Re-raise storage failures a user has to fix as StorageError; leave the rest alone."""
    @functools.wraps(fn)
    def wrapper(url, *args, **kwargs):
        try:
            return fn(url, *args, **kwargs)
        except Exception as e:
            mapped = storage_error(url, e)
            if mapped is None or mapped is e:
                raise
            raise mapped from None
    return wrapper


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol
    return "file" in protocols or "local" in protocols


def _make_parent(fs: fsspec.AbstractFileSystem, path: str) -> None:
    # Object stores have no folders; local writes need them.
    if not _is_local(fs):
        return
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    except (FileExistsError, NotADirectoryError):  # a file where one of the folders must be
        raise StorageError(f"{path}: {_file_in_the_way(path) or 'a part of it'} is a file, not a folder") from None


def _file_in_the_way(url: str) -> str | None:
    """The local file that lies where a folder above `url` must be (writing or reading `url` fails
    on it with NotADirectoryError or FileExistsError), or None: none does, or an object store."""
    fs, path = filesystem(url)
    if not _is_local(fs):
        return None
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.lexists(parent):  # ends at the root, which exists
        parent = os.path.dirname(parent)
    return None if os.path.isdir(parent) else parent


def _check_regular_file(fs: fsspec.AbstractFileSystem, url: str, path: str) -> None:
    """Refuse a local path that is not a regular file before opening it: a folder fails late, and a
    named pipe or a device would block the reader forever (or never end). Object stores hold
    only objects. A missing path is left to the open (FileNotFoundError)."""
    if not _is_local(fs) or not os.path.lexists(path):
        return
    mode = os.stat(path).st_mode
    if stat.S_ISDIR(mode):
        raise StorageError(f"{url} is not a file: it is a folder")
    if not stat.S_ISREG(mode):
        kind = ("a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a file")
        raise StorageError(f"{url} is not a regular file: it is {kind}")


def check_file_target(url: str) -> None:
    """Before the work whose result goes to `url`: refuse a URL no file can be written to (a folder
    is there, which no overwrite replaces, or a local file lies where a folder above it must be),
    rather than fail at the end and lose the work."""
    if url_kind(url) == "folder":
        raise StorageError(f"{url} is not a file: it is a folder")
    blocker = _file_in_the_way(url)
    if blocker:
        raise StorageError(f"{url}: {blocker} is a file, not a folder")


@contextmanager
def open_url(url: str, mode: str = "rb") -> Iterator:
    """Open a URL like open(); writing creates missing local parent folders."""
    f = _open(url, mode)
    with f:
        yield f


@_user_errors
def _open(url: str, mode: str):
    fs, path = filesystem(url)
    if any(c in mode for c in "wax"):
        _make_parent(fs, path)
    else:
        _check_regular_file(fs, url, path)
    return fs.open(path, mode)


def join_url(base: str, *parts: str) -> str:
    """Join with "/" whatever the scheme: join_url("s3://b/runs/", "x", "y.pt") -> "s3://b/runs/x/y.pt"."""
    parts = [p.strip("/") for p in parts if p.strip("/")]
    head = base.rstrip("/")
    prefix = base if not head or head.endswith(":") else head + "/"  # keeps "", "/", "file:///"
    return prefix + "/".join(parts) if parts else base


@_user_errors
def url_exists(url: str) -> bool:
    fs, path = filesystem(url)
    return fs.exists(path)


@_user_errors
def url_kind(url: str) -> str | None:
    """"folder", "file" or None (nothing there)."""
    fs, path = filesystem(url)
    if fs.isdir(path):
        return "folder"
    return "file" if fs.exists(path) else None


@_user_errors
def holds_anything(url: str) -> bool:
    """Whether anything is at `url`: a file, or a folder (prefix) with at least one entry, hidden
    ones included. A missing folder and an empty one hold nothing."""
    fs, path = filesystem(url)
    try:
        return bool(fs.ls(path, detail=False))
    except (FileNotFoundError, NotADirectoryError):
        return False


@_user_errors
def list_tree(root: str) -> list[str]:
    """Sorted relative paths of the files under folder `root`, recursively; hidden files and
    folders (.DS_Store, ._x.jpg, .ipynb_checkpoints/) left out. A missing folder lists as empty."""
    fs, path = filesystem(root)
    if not fs.isdir(path):
        return []
    base = path.rstrip("/") + "/"
    rels = (p[len(base):] for p in fs.find(path) if p.startswith(base))
    return sorted(r for r in rels if not any(part.startswith(".") for part in r.split("/")))


def list_urls(url: str, suffix: str = "") -> list[str]:
    """Sorted URLs of the files directly inside folder `url` whose names end with `suffix`.
    A missing folder lists as empty."""
    return sorted(list_sizes(url, suffix))


@_user_errors
def list_sizes(url: str, suffix: str = "") -> dict[str, int]:
    """{URL: size in bytes} of the files list_urls lists, from the same single listing."""
    fs, path = filesystem(url)
    try:
        entries = fs.ls(path, detail=True)
    except (FileNotFoundError, NotADirectoryError):
        return {}
    files = {e["name"].rstrip("/").rsplit("/", 1)[-1]: int(e.get("size") or 0)
             for e in entries if e.get("type") != "directory"}
    return {join_url(url, n): size for n, size in sorted(files.items()) if n.endswith(suffix)}


@_user_errors
def write_bytes(url: str, data: bytes) -> None:
    """Write a whole object so that no reader ever sees part of it: an object store publishes a
    PUT only once complete; a local file is written durably (`write_local_atomic`)."""
    fs, path = filesystem(url)
    _make_parent(fs, path)
    if not _is_local(fs):
        fs.pipe_file(path, bytes(data))
        return
    write_local_atomic(path, data)


def write_local_atomic(path: str, data: bytes) -> None:
    """Write a local file so that a crash leaves either the old file or the whole new one, never
    part of it: a temporary file in the same folder, flushed and fsync'ed, renamed over `path`,
    then the folder fsync'ed (so the rename itself survives a power cut). On any failure the
    temporary file is removed and the error raised; `path` is untouched."""
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    # Hidden (list_tree leaves it out), unique per process and call, created with the mode a plain
    # open() gives (mkstemp's would be 0600).
    partial = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}-{uuid.uuid4().hex[:12]}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(memoryview(data))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(partial)
        raise
    _fsync_folder(folder)


def _fsync_folder(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a platform without folder handles (Windows): the rename is what it offers
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@_user_errors
def read_bytes(url: str) -> bytes:
    fs, path = filesystem(url)
    _check_regular_file(fs, url, path)
    return fs.cat_file(path)


def put_file(local_path: str, url: str) -> None:
    """Copy a local file to a URL (multipart upload on S3, a plain copy locally)."""
    _put_file(url, local_path)


@_user_errors
def _put_file(url: str, local_path: str) -> None:
    fs, path = filesystem(url)
    _make_parent(fs, path)
    fs.put_file(local_path, path)


@_user_errors
def remove_url(url: str) -> None:
    """Delete one file if it exists."""
    fs, path = filesystem(url)
    if fs.exists(path):
        fs.rm_file(path)


@_user_errors
def remove_tree(url: str) -> None:
    """Delete a folder (or prefix) and everything under it, if it exists."""
    fs, path = filesystem(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


@_user_errors
def move_file(src: str, dst: str) -> None:
    """Move one file to a new URL on the same filesystem: a rename locally, copy then delete on an
    object store. Nothing happens if `src` does not exist."""
    _move(src, dst, lambda fs, path, target: fs.mv(path, target))


@_user_errors
def list_folders(url: str, prefix: str = "") -> list[str]:
    """Sorted names of the folders (prefixes) directly inside `url` whose names start with
    `prefix`; a missing folder lists as empty."""
    fs, path = filesystem(url)
    try:
        entries = fs.ls(path, detail=True)
    except (FileNotFoundError, NotADirectoryError):
        return []
    names = (e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "directory")
    return sorted(n for n in names if n.startswith(prefix))


@_user_errors
def move_tree(src: str, dst: str) -> None:
    """Move a folder (or prefix) to a new URL on the same filesystem: a rename locally, copy then
    delete on an object store. Nothing happens if `src` does not exist."""
    def copy_then_delete(fs, path, target):
        fs.copy(path.rstrip("/") + "/", target.rstrip("/") + "/", recursive=True)
        fs.rm(path, recursive=True)

    _move(src, dst, copy_then_delete)


def _move(src: str, dst: str, on_object_store) -> None:
    """What move_file and move_tree share: nothing when `src` is missing, os.replace locally
    (atomic, any kind of entry), else `on_object_store(fs, path, target)`."""
    fs, path = filesystem(src)
    _, target = filesystem(dst)
    if not fs.exists(path):
        return
    if _is_local(fs):
        _make_parent(fs, target)
        os.replace(path, target)
        return
    on_object_store(fs, path, target)


def arrow_filesystem(url: str):
    """(pyarrow filesystem, path) for libraries that take one (Ray Train's run storage): the same
    fsspec filesystem and options as everything else, wrapped. Local paths give (None, path)."""
    fs, path = filesystem(url)
    if _is_local(fs):
        return None, path
    import pyarrow.fs

    return pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs)), path
