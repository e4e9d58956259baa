"""Paths and filesystems: local paths, `file://`, `s3://` (any fsspec URI), globs and shard directories.

Every listing the driver acts on must show the storage as it is now: scoring actors in other processes
commit pieces while the driver runs, and fsspec keeps one filesystem instance per process whose listing
cache (s3fs's `dircache`) is otherwise never refreshed. So `filesystem` hands out remote filesystems with
the listing cache off, and the listing helpers here drop what a filesystem may have cached before they
list. Writes go through `write_atomically`: a reader sees a file whole or not at all, on a local disk
also after a power loss.
"""

from __future__ import annotations

import json
import os
import posixpath
import uuid
from collections.abc import Callable
from io import BytesIO
from typing import BinaryIO

import fsspec
import pyarrow.parquet as pq

from schemas.tables import InputError

LOCAL_PROTOCOLS = ("file", "local")


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem of `uri` and the path in it. A remote one keeps no listing cache: a listing
    or `exists` always asks the store (the instance is shared with every caller in this process)."""
    protocol, _ = fsspec.core.split_protocol(uri)
    if protocol in (None, *LOCAL_PROTOCOLS):
        return fsspec.core.url_to_fs(uri)
    return fsspec.core.url_to_fs(uri, use_listings_cache=False)


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    proto = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return proto in LOCAL_PROTOCOLS


def fresh(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """`filesystem(uri)` with anything cached about `uri` dropped: for a listing the caller trusts."""
    fs, path = filesystem(uri)
    fs.invalidate_cache(path)
    return fs, path


def list_names(directory: str) -> list[str]:
    """The names directly in `directory` (none when it does not exist), listed fresh."""
    fs, path = fresh(directory)
    try:
        names = fs.ls(path, detail=False, refresh=True)
    except FileNotFoundError:  # never created, or removed (on object storage: its last object deleted)
        return []
    return sorted(posixpath.basename(p.rstrip("/")) for p in names)


def qualify(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A path the other side (Ray workers) can open: protocol prefix restored for remote filesystems."""
    proto = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return path if proto in LOCAL_PROTOCOLS else f"{proto}://{path}"


def list_parquet(uri: str) -> list[str]:
    """Expand a file, a directory of shards (recursively) or a glob into Parquet files; fail in one line."""
    return list_files(uri, (".parquet",), "Parquet")


def list_files(uri: str, extensions: tuple[str, ...], kind: str) -> list[str]:
    """Expand a file, a directory of shards (recursively: the files ending in one of `extensions`) or a glob
    into files; names starting with '_' or '.' are skipped. `kind` names the format in the error."""
    fs, path = fresh(uri)
    if any(ch in path for ch in "*?["):
        files = sorted(fs.glob(path))
    elif fs.isdir(path):
        files = sorted(p for p in fs.find(path) if p.endswith(extensions))
    elif fs.exists(path):
        files = [path]
    else:
        raise InputError(f"{uri}: no such file or directory")
    files = [f for f in files if not posixpath.basename(f).startswith(("_", "."))]
    if not files:
        raise InputError(
            f"{uri}: no {kind} files found (expected a {'/'.join(extensions)} file, a directory of shards "
            "or a glob)"
        )
    return [qualify(fs, f) for f in files]


def read_schema(file_uri: str):
    fs, path = filesystem(file_uri)
    try:
        with fs.open(path, "rb") as f:
            return pq.read_schema(f)
    except Exception as exc:
        raise InputError(f"{file_uri}: not a readable Parquet file ({type(exc).__name__}: {exc})") from exc


def count_rows(file_uris: list[str]) -> int:
    total = 0
    for uri in file_uris:
        fs, path = filesystem(uri)
        with fs.open(path, "rb") as f:
            total += pq.ParquetFile(f).metadata.num_rows
    return total


def join(uri: str, *parts: str) -> str:
    return uri.rstrip("/") + "/" + "/".join(parts)


def exists(uri: str) -> bool:
    fs, path = fresh(uri)
    return fs.exists(path)


def remove(uri: str) -> None:
    fs, path = fresh(uri)
    if fs.exists(path):
        fs.rm(path, recursive=True)
        fs.invalidate_cache(path)


def move(source: str, target: str) -> None:
    """Move the directory `source` to `target`, which must not exist. On a local disk one rename; on an
    object store a copy of every object, then the source removed (not atomic: a reader may see both)."""
    fs, src = fresh(source)
    _, dst = filesystem(target)
    if is_local(fs):
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        os.rename(src, dst)
        return
    fs.copy(src.rstrip("/") + "/", dst.rstrip("/") + "/", recursive=True)
    fs.invalidate_cache(dst)
    remove(source)


def write_atomically(uri: str, write: Callable[[BinaryIO], object]) -> None:
    """Write a file that a reader sees whole or not at all; `write(f)` fills it. On a local disk: a
    temporary file beside it, flushed and fsynced, renamed over `uri`, and the directory fsynced (so a
    power loss leaves the old file or the new one, never a truncated one). On an object store: one PUT of
    the whole body (an object appears complete), with no temporary object to copy and delete."""
    fs, path = filesystem(uri)
    if not is_local(fs):
        buffer = BytesIO()
        write(buffer)
        fs.pipe_file(path, buffer.getvalue())
        fs.invalidate_cache(path)
        return
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".tmp-{uuid.uuid4().hex}-{os.path.basename(path)}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(uri: str, payload: dict) -> None:
    """Write JSON so a reader never sees a half-written file (`write_atomically`)."""
    body = json.dumps(payload, indent=2, sort_keys=True, default=str).encode()
    write_atomically(uri, lambda f: f.write(body))


def read_json(uri: str) -> dict:
    fs, path = filesystem(uri)
    with fs.open(path, "r") as f:
        return json.load(f)


def pyarrow_filesystem(uri: str):
    """The filesystem to hand Ray Data for `uri` (None lets Ray resolve local paths itself)."""
    fs, _ = filesystem(uri)
    if is_local(fs):
        return None
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    return PyFileSystem(FSSpecHandler(fs))
