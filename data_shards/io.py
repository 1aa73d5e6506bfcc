"""The one way the project opens a URL: a local path, file://..., s3://... or any fsspec protocol.

Credentials and endpoints are never passed in code. For S3 they come from the standard AWS
environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_PROFILE, AWS_ENDPOINT_URL for a
non-AWS server such as MinIO or moto) or from fsspec's own config (FSSPEC_S3_ENDPOINT_URL=...).

Functions take and return URLs in the form the caller used: a plain path stays a plain path and
s3://bucket/key keeps its scheme, so URLs can be written to configs and manifests unchanged.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import fsspec


def filesystem(url: str, **storage_options) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) for a URL. fsspec caches instances per process and drops them
    after a fork, so calling this inside a DataLoader worker gives that worker its own client."""
    return fsspec.core.url_to_fs(url, **storage_options)


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol
    return "file" in protocols or "local" in protocols


def _make_parent(fs: fsspec.AbstractFileSystem, path: str) -> None:
    # Object stores have no folders; local writes need them.
    if _is_local(fs):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)


@contextmanager
def open_url(url: str, mode: str = "rb") -> Iterator:
    """Open a URL like open(); writing creates missing local parent folders."""
    fs, path = filesystem(url)
    if any(c in mode for c in "wax"):
        _make_parent(fs, path)
    with fs.open(path, mode) as f:
        yield f


def join_url(base: str, *parts: str) -> str:
    """Join with "/" whatever the scheme: join_url("s3://b/runs/", "x", "y.pt") -> "s3://b/runs/x/y.pt"."""
    parts = [p.strip("/") for p in parts if p.strip("/")]
    head = base.rstrip("/")
    prefix = base if not head or head.endswith(":") else head + "/"  # keeps "", "/", "file:///"
    return prefix + "/".join(parts) if parts else base


def url_exists(url: str) -> bool:
    fs, path = filesystem(url)
    return fs.exists(path)


def list_urls(url: str, suffix: str = "") -> list[str]:
    """Sorted URLs of the files directly inside folder `url` whose names end with `suffix`.
    A missing folder lists as empty."""
    fs, path = filesystem(url)
    try:
        entries = fs.ls(path, detail=True)
    except (FileNotFoundError, NotADirectoryError):
        return []
    names = [e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") != "directory"]
    return sorted(join_url(url, n) for n in names if n.endswith(suffix))


def write_bytes(url: str, data: bytes) -> None:
    fs, path = filesystem(url)
    _make_parent(fs, path)
    fs.pipe_file(path, bytes(data))


def read_bytes(url: str) -> bytes:
    fs, path = filesystem(url)
    return fs.cat_file(path)


def put_file(local_path: str, url: str) -> None:
    """Copy a local file to a URL (multipart upload on S3, a plain copy locally)."""
    fs, path = filesystem(url)
    _make_parent(fs, path)
    fs.put_file(local_path, path)


def remove_url(url: str) -> None:
    """Delete one file if it exists."""
    fs, path = filesystem(url)
    if fs.exists(path):
        fs.rm_file(path)
