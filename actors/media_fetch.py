"""Fetching one media reference: a local path, file://, s3:// (or another fsspec protocol), http(s)://.

Each fetch runs under a deadline (socket timeouts plus a check between reads) and a byte cap, follows
redirects only to allowed schemes, and turns every failure into a `MediaError` whose message is the reason
written to errors/ (not found, access denied, unreachable, timed out, over the cap, scheme not allowed).
"""

from __future__ import annotations

import os
import re
import time
import urllib.error
import urllib.request
from typing import Any

from actors.media_spec import MediaError, MediaSpec, first_line

READ_CHUNK = 1 << 20


def scheme_of(ref: str) -> str:
    """`s3` for s3://..., `file` for file://... and for plain local paths."""
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", ref)
    return match.group(1).lower() if match else "file"


def fetch_bytes(ref: str, spec: MediaSpec) -> bytes:
    """The bytes of one reference, or MediaError with the reason (not found, unreachable, timed out,
    over the byte cap, scheme not allowed)."""
    if not ref.strip():
        raise MediaError("empty reference")
    scheme = scheme_of(ref)
    if scheme not in spec.allowed_schemes:
        raise MediaError(f"scheme {scheme!r} not allowed (allowed: {', '.join(spec.allowed_schemes)})")
    deadline = time.monotonic() + spec.timeout_s
    try:
        if scheme in ("http", "https"):
            return _fetch_http(ref, spec, deadline)
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
        raise MediaError(f"unreachable: {type(exc).__name__}: {first_line(exc)}") from None


class _AllowedRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to an allowed scheme (urllib would also follow one to ftp://)."""

    def __init__(self, allowed: tuple[str, ...]):
        super().__init__()
        self.allowed = allowed

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        scheme = scheme_of(newurl)
        if scheme not in self.allowed:
            raise MediaError(f"redirected to {newurl!r}, scheme {scheme!r} not allowed")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _fetch_http(url: str, spec: MediaSpec, deadline: float) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "ray-rerank-media/1"})
    opener = urllib.request.build_opener(_AllowedRedirects(spec.allowed_schemes))
    try:
        response = opener.open(request, timeout=spec.timeout_s)
    except urllib.error.HTTPError as exc:
        if exc.code in (404, 410):
            raise MediaError(f"not found (HTTP {exc.code})") from None
        raise MediaError(f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        if _is_timeout(exc.reason):
            raise MediaError(f"timed out after {spec.timeout_s:.1f} s") from None
        raise MediaError(f"unreachable: {exc.reason}") from None
    with response:
        length = response.headers.get("Content-Length")
        if length is not None and length.isdigit():
            _check_size(int(length), spec)
        return _read_capped(response, spec, deadline)


def _fetch_local(ref: str, spec: MediaSpec, deadline: float) -> bytes:
    path = os.path.expanduser(ref[len("file://") :] if ref.startswith("file://") else ref)
    with open(path, "rb") as f:
        _check_size(os.fstat(f.fileno()).st_size, spec)
        return _read_capped(f, spec, deadline)


def _fetch_fsspec(ref: str, spec: MediaSpec, deadline: float) -> bytes:
    fs, path = _filesystem(ref, spec)
    with fs.open(path, "rb") as f:
        size = getattr(f, "size", None)
        if size is not None:
            _check_size(int(size), spec)
        return _read_capped(f, spec, deadline)


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


def _read_capped(stream, spec: MediaSpec, deadline: float) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while True:
        if time.monotonic() > deadline:
            raise MediaError(f"timed out after {spec.timeout_s:.1f} s")
        chunk = stream.read(min(READ_CHUNK, spec.max_bytes + 1 - total))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if total > spec.max_bytes:
            raise MediaError(f"more than {_size(spec.max_bytes)}, over the {_size(spec.max_bytes)} cap")


def _check_size(size: int, spec: MediaSpec) -> None:
    if size > spec.max_bytes:
        raise MediaError(f"{_size(size)} over the {_size(spec.max_bytes)} cap")


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


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{round(n / scale, 1):g} {unit}"
    return f"{n} B"
