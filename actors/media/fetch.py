"""Fetching one media reference: a local path, file://, s3:// (or another fsspec protocol), http(s)://.

Each fetch runs under a deadline (socket timeouts plus a check between reads) and a byte cap, and turns
every failure into a `MediaError` whose message is the reason written to errors/ (not found, access
denied, unreachable, timed out, over the cap, scheme or address not allowed, not a regular file). http(s)
goes through `actors.media.http_client` (the address policy, redirects); local paths must be regular files.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from typing import Any

from actors.media.http_client import fetch_http
from actors.media.spec import MediaError, MediaSpec, first_line, human_bytes, scheme_of

READ_CHUNK = 1 << 20


def fetch_bytes(ref: str, spec: MediaSpec) -> bytes:
    """The bytes of one reference, or MediaError with the reason (not found, unreachable, timed out,
    over the byte cap, scheme or address not allowed, not a regular file)."""
    if not ref.strip():
        raise MediaError("empty reference")
    scheme = scheme_of(ref)
    if scheme not in spec.allowed_schemes:
        raise MediaError(f"scheme {scheme!r} not allowed (allowed: {', '.join(spec.allowed_schemes)})")
    deadline = time.monotonic() + spec.timeout_s
    try:
        if scheme in ("http", "https"):
            return fetch_http(
                ref, spec, deadline, lambda read, size: read_capped(read, spec, deadline, size, closes=True)
            )
        if scheme == "file":
            return _fetch_local(ref, spec, deadline)
        return _fetch_fsspec(ref, spec, deadline)
    except MediaError:
        raise
    except FileNotFoundError:
        raise MediaError("not found") from None
    except IsADirectoryError:
        raise MediaError("is a directory, not a file") from None
    except PermissionError as exc:
        raise MediaError(f"access denied: {first_line(exc)}") from None
    except Exception as exc:
        if _is_timeout(exc):
            raise MediaError(f"timed out after {spec.timeout_s:.1f} s") from None
        if isinstance(exc, OSError) and scheme in ("http", "https"):
            raise MediaError(f"unreachable: {first_line(exc)}") from None
        raise MediaError(f"unreachable: {type(exc).__name__}: {first_line(exc)}") from None


_NOT_REGULAR = (
    (stat.S_ISDIR, "is a directory, not a file"),
    (stat.S_ISFIFO, "is a FIFO (named pipe), not a regular file"),
    (stat.S_ISCHR, "is a character device, not a regular file"),
    (stat.S_ISBLK, "is a block device, not a regular file"),
    (stat.S_ISSOCK, "is a socket, not a regular file"),
)


def _check_regular(mode: int) -> None:
    for test, reason in _NOT_REGULAR:
        if test(mode):
            raise MediaError(reason)
    if not stat.S_ISREG(mode):
        raise MediaError("not a regular file")


def _fetch_local(ref: str, spec: MediaSpec, deadline: float) -> bytes:
    """Only regular files are read: a FIFO would block `open` until a writer comes, a device never ends.
    The type is checked before opening, and again on the opened descriptor (opened non-blocking, so a path
    swapped for a FIFO in between cannot block either)."""
    path = os.path.expanduser(ref[len("file://") :] if ref.startswith("file://") else ref)
    _check_regular(os.stat(path).st_mode)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        _check_regular(info.st_mode)
        return read_capped(f.read, spec, deadline, info.st_size)


def _fetch_fsspec(ref: str, spec: MediaSpec, deadline: float) -> bytes:
    fs, path = _filesystem(ref, spec)
    with fs.open(path, "rb") as f:
        size = getattr(f, "size", None)
        return read_capped(f.read, spec, deadline, None if size is None else int(size))


def _filesystem(ref: str, spec: MediaSpec):
    import fsspec

    scheme = scheme_of(ref)
    options: dict[str, Any] = {}
    if scheme in ("s3", "s3a"):
        endpoint = (
            spec.s3_endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
        )
        options = {
            "config_kwargs": {
                "connect_timeout": spec.timeout_s,
                "read_timeout": spec.timeout_s,
                "retries": {"max_attempts": 2, "mode": "standard"},
            },
            "endpoint_url": endpoint,
        }
    return fsspec.core.url_to_fs(ref, **options)


def read_capped(
    read: Callable[[int], bytes], spec: MediaSpec, deadline: float, size: int | None, closes: bool = False
) -> bytes:
    """Read to the end with `read(n)` under the byte cap and the deadline. `size`: the length the source
    declares (file size, Content-Length), checked against the cap before anything is read; with `closes`,
    a source that ends before its declared length is an error (a connection closed mid-body)."""
    if size is not None:
        _check_size(size, spec)
    chunks: list[bytes] = []
    total = 0
    while True:
        if time.monotonic() > deadline:
            raise MediaError(f"timed out after {spec.timeout_s:.1f} s")
        chunk = read(min(READ_CHUNK, spec.max_bytes + 1 - total))
        if not chunk:
            if closes and size is not None and total < size:
                raise MediaError(f"unreachable: connection closed after {total} of {size} bytes")
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if total > spec.max_bytes:
            raise MediaError(
                f"more than {human_bytes(spec.max_bytes)}, over the {human_bytes(spec.max_bytes)} cap"
            )


def _check_size(size: int, spec: MediaSpec) -> None:
    if size > spec.max_bytes:
        raise MediaError(f"{human_bytes(size)} over the {human_bytes(spec.max_bytes)} cap")


def _is_timeout(exc: BaseException | str | None) -> bool:
    if isinstance(exc, TimeoutError):  # socket.timeout is TimeoutError
        return True
    name = type(exc).__name__
    return "Timeout" in name or (isinstance(exc, BaseException) and _is_timeout(exc.__cause__))


def connect_clients(refs, spec: MediaSpec) -> None:
    """Create the object-store clients (s3, gs, ...) a block needs before any fetch starts, so that the
    per-reference deadline covers the transfer, not the one-off client setup and credential lookup. A
    client that cannot be set up is left to fail each of its fetches with the reason."""
    seen: set[str] = set()
    for ref in refs:
        scheme = scheme_of(ref)
        if scheme in seen or scheme in ("file", "http", "https") or scheme not in spec.allowed_schemes:
            continue
        seen.add(scheme)
        try:
            fs, _ = _filesystem(ref, spec)
            connect = getattr(fs, "connect", None)  # s3fs: builds the client and resolves credentials
            if callable(connect):
                connect()
        except Exception:  # reported per reference by fetch_bytes, with the same cause
            continue
