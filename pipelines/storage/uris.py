"""Paths and filesystems: local paths, `file://`, `s3://` (any fsspec URI), globs and shard directories."""

from __future__ import annotations

import json
import posixpath

import fsspec
import pyarrow.parquet as pq

from schemas.tables import InputError


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, path = fsspec.core.url_to_fs(uri)
    return fs, path


def qualify(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A path the other side (Ray workers) can open: protocol prefix restored for remote filesystems."""
    proto = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return path if proto in ("file", "local") else f"{proto}://{path}"


def list_parquet(uri: str) -> list[str]:
    """Expand a file, a directory of shards (recursively) or a glob into Parquet files; fail in one line."""
    return list_files(uri, (".parquet",), "Parquet")


def list_files(uri: str, extensions: tuple[str, ...], kind: str) -> list[str]:
    """Expand a file, a directory of shards (recursively: the files ending in one of `extensions`) or a glob
    into files; names starting with '_' or '.' are skipped. `kind` names the format in the error."""
    fs, path = filesystem(uri)
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
    fs, path = filesystem(uri)
    return fs.exists(path)


def remove(uri: str) -> None:
    fs, path = filesystem(uri)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def write_json(uri: str, payload: dict) -> None:
    """Write JSON so a reader never sees a half-written file: temp object then rename (atomic locally)."""
    fs, path = filesystem(uri)
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with fs.open(tmp, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True, default=str)
    fs.mv(tmp, path)


def read_json(uri: str) -> dict:
    fs, path = filesystem(uri)
    with fs.open(path, "r") as f:
        return json.load(f)


def pyarrow_filesystem(uri: str):
    """The filesystem to hand Ray Data for `uri` (None lets Ray resolve local paths itself)."""
    fs, _ = filesystem(uri)
    proto = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if proto in ("file", "local"):
        return None
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    return PyFileSystem(FSSpecHandler(fs))
