"""The media stage: fetch and decode the image/audio/video references of a block of pairs on CPU workers.

`MediaSpec` is the small frozen spec, validated on the driver. `resolve_media` is the stage, a
`map_batches(batch_format="pyarrow")` function: for every media column (`query_image`, `candidate_video`,
...) it fetches each distinct reference of the block once (fsspec; urllib for http(s)), concurrently, each
under a deadline and a byte cap, decodes it (PIL for images; torchcodec for audio and video) under the
decode caps, and writes the decoded payload (see `actors.media_codec`) into the internal column
`__<column>`. A reference that cannot be used marks its rows with `__error` / `__stage = "media"` and a
reason that names the column, the reference and what went wrong; the other rows go on to be scored.
"""

from __future__ import annotations

import io
import os
import re
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import pyarrow as pa

from actors.media_codec import AUDIO_SAMPLE_RATE, encode_payload, payload_array
from schemas import columns as c
from schemas.settings import SettingError, setting

MEDIA_COLUMNS = [f"{side}_{m}" for side in ("query", "candidate") for m in c.MEDIA_MODALITIES]
NEEDS = [c.ROW_ERROR, c.ROW_STAGE]
ADDS = [c.media_payload_column(col) for col in MEDIA_COLUMNS]
STAGE = "media"
READ_CHUNK = 1 << 20


class MediaError(Exception):
    """A reference that cannot be used; the message is the reason written to errors/."""


@dataclass(frozen=True)
class MediaSpec:
    """Fetch and decode limits of the media stage. Small, picklable, validated on the driver.

    query_/candidate_ image, audio and video columns hold references (a local path, file://, s3://,
    http(s)://). CPU tasks fetch each distinct reference once per block and decode it; a reference that
    fails any check becomes one row in errors/ and the rest is scored."""

    timeout_s: float = setting(
        30.0, flag="media-timeout", help="seconds allowed to fetch one reference, connect to last byte"
    )
    max_bytes: int = setting(64_000_000, flag="max-media-bytes", help="largest reference fetched, in bytes")
    max_image_pixels: int = setting(
        50_000_000, help="largest image, and video frame, in width x height pixels"
    )
    max_audio_seconds: float = setting(600.0, help="longest audio clip, in seconds (longer is an error)")
    max_video_frames: int = setting(256, help="most frames in a video; every frame is decoded")
    max_video_seconds: float = setting(600.0, help="longest video, in seconds")
    allowed_schemes: tuple[str, ...] = setting(
        ("file", "s3", "http", "https"),
        help="comma-separated reference schemes that may be fetched; 'file' covers local paths and file://",
    )
    audio_sample_rate: int = setting(AUDIO_SAMPLE_RATE, help="audio is resampled to this rate (Hz), mono")
    fetch_threads: int = setting(
        16, flag="media-fetch-threads", help="references fetched concurrently per block"
    )
    s3_endpoint_url: str | None = setting(
        None,
        help="S3-compatible endpoint for s3:// media, e.g. http://minio:9000 (default: AWS_ENDPOINT_URL_S3 "
        "or AWS_ENDPOINT_URL of the workers' environment, else AWS)",
    )

    def validate(self) -> MediaSpec:
        for name in (f.name for f in fields(self)):
            value = getattr(self, name)
            if isinstance(value, int | float) and not isinstance(value, bool) and not value > 0:
                raise SettingError(name, f"must be > 0, got {value!r}")
        if not self.allowed_schemes:
            raise SettingError("allowed_schemes", "is empty; allow at least one of file, s3, http, https")
        import fsspec

        known = set(fsspec.available_protocols()) | {"file", "http", "https"}
        for scheme in self.allowed_schemes:
            if scheme != scheme.lower() or scheme not in known:
                raise SettingError(
                    "allowed_schemes",
                    f"{scheme!r} is not a known scheme; expected lower-case fsspec protocols such as "
                    "file, s3, http, https (gs, az with their fsspec packages installed)",
                )
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------------ the stage


def resolve_media(table: pa.Table, spec: MediaSpec) -> pa.Table:
    """Add a payload column for every media column of `table` and mark rows whose media failed.

    Rows that already carry `__error` (from validation) or a `__cached_score` (scored by an earlier run)
    are not fetched. Each distinct reference is fetched once and decoded once per modality, however many
    rows and columns use it.
    """
    errors = _column_or_nulls(table, c.ROW_ERROR)
    stages = _column_or_nulls(table, c.ROW_STAGE)
    cached = _column_or_nulls(table, c.ROW_CACHED_SCORE)
    skip = [e is not None or s is not None for e, s in zip(errors, cached, strict=True)]
    columns = [col for col in MEDIA_COLUMNS if col in table.column_names]
    refs = {col: table.column(col).to_pylist() for col in columns}
    wanted: dict[str, set[str]] = {}  # reference -> modalities it is decoded as
    for col in columns:
        modality = col.rsplit("_", 1)[1]
        for i, ref in enumerate(refs[col]):
            if ref is not None and not skip[i]:
                wanted.setdefault(ref, set()).add(modality)

    decoded = _fetch_and_decode(wanted, spec)

    out = table
    for col in columns:
        modality = col.rsplit("_", 1)[1]
        payloads: list[bytes | None] = []
        for i, ref in enumerate(refs[col]):
            result = decoded.get((ref, modality)) if ref is not None and not skip[i] else None
            if isinstance(result, MediaError):
                errors[i], stages[i] = f"{col} {ref!r}: {result}", STAGE
                result = None
            payloads.append(result)
        name = c.media_payload_column(col)
        if name in out.column_names:
            out = out.drop_columns([name])
        out = out.append_column(name, payload_array(payloads))
    out = out.drop_columns([n for n in (c.ROW_ERROR, c.ROW_STAGE) if n in out.column_names])
    return out.append_column(c.ROW_ERROR, pa.array(errors, pa.string())).append_column(
        c.ROW_STAGE, pa.array(stages, pa.string())
    )


def _fetch_and_decode(wanted: dict[str, set[str]], spec: MediaSpec) -> dict[tuple[str, str], Any]:
    """{(reference, modality): payload bytes or MediaError}. Fetches run on a thread pool; each is given
    `timeout_s` from the moment it starts, enforced both by socket timeouts and by this watchdog (a fetch
    stuck past its deadline is abandoned, its thread left to its own socket timeout)."""
    results: dict[tuple[str, str], Any] = {}
    if not wanted:
        return results
    _connect_clients(wanted, spec)
    started: dict[str, float] = {}
    lock = threading.Lock()

    def task(ref: str) -> bytes:
        with lock:
            started[ref] = time.monotonic()
        return fetch_bytes(ref, spec)

    pool = ThreadPoolExecutor(max_workers=min(spec.fetch_threads, len(wanted)), thread_name_prefix="media")
    try:
        pending: dict[Future, str] = {pool.submit(task, ref): ref for ref in wanted}
        while pending:
            done, _ = wait(pending, timeout=0.05, return_when=FIRST_COMPLETED)
            for future in done:
                ref = pending.pop(future)
                try:
                    data: bytes | MediaError = future.result()
                except MediaError as exc:
                    data = exc
                for modality in wanted[ref]:
                    results[(ref, modality)] = (
                        data if isinstance(data, MediaError) else _decode(modality, data, spec)
                    )
            now = time.monotonic()
            with lock:
                late = [
                    f
                    for f, ref in pending.items()
                    if not f.done() and ref in started and now - started[ref] > spec.timeout_s
                ]
            for future in late:
                ref = pending.pop(future)
                for modality in wanted[ref]:
                    results[(ref, modality)] = MediaError(f"timed out after {spec.timeout_s:.1f} s")
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return results


def _connect_clients(refs, spec: MediaSpec) -> None:
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


def _column_or_nulls(table: pa.Table, name: str) -> list:
    if name in table.column_names:
        return table.column(name).to_pylist()
    return [None] * table.num_rows


# ------------------------------------------------------------------------------------------------ fetch


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
        raise MediaError(f"access denied: {_first_line(exc)}") from None
    except Exception as exc:
        if _is_timeout(exc):
            raise MediaError(f"timed out after {spec.timeout_s:.1f} s") from None
        raise MediaError(f"unreachable: {type(exc).__name__}: {_first_line(exc)}") from None


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


# ----------------------------------------------------------------------------------------------- decode


def _decode(modality: str, data: bytes, spec: MediaSpec) -> bytes | MediaError:
    try:
        if modality == "image":
            array = decode_image(data, spec)
        elif modality == "audio":
            array = decode_audio(data, spec)
        else:
            array = decode_video(data, spec)
        return encode_payload(modality, array)
    except MediaError as exc:
        return exc
    except Exception as exc:  # any decoder failure is this reference's error, not the block's
        return MediaError(f"cannot decode as {modality}: {_decoder_message(exc)}")


def decode_image(data: bytes, spec: MediaSpec) -> np.ndarray:
    """RGB uint8 (H, W, 3), EXIF orientation applied (as transformers' `load_image` does)."""
    from PIL import Image, ImageOps

    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise MediaError(f"over the {spec.max_image_pixels:,} pixel cap ({_first_line(exc)})") from None
    width, height = image.size  # from the header: checked before any pixel is decoded
    if width * height > spec.max_image_pixels:
        pixels = width * height
        raise MediaError(
            f"{width}x{height} image is {pixels:,} pixels, over the {spec.max_image_pixels:,} pixel cap"
        )
    image = ImageOps.exif_transpose(image).convert("RGB")
    return np.asarray(image, dtype=np.uint8)


def decode_audio(data: bytes, spec: MediaSpec) -> np.ndarray:
    """Mono float32 (N,) at `spec.audio_sample_rate` (torchcodec resamples and downmixes)."""
    from torchcodec.decoders import AudioDecoder

    decoder = AudioDecoder(data, sample_rate=spec.audio_sample_rate, num_channels=1)
    duration = decoder.metadata.duration_seconds
    if duration is not None and duration > spec.max_audio_seconds:
        raise MediaError(f"{duration:.1f} s of audio, over the {spec.max_audio_seconds:g} s cap")
    samples = decoder.get_all_samples().data
    seconds = samples.shape[-1] / spec.audio_sample_rate
    if seconds > spec.max_audio_seconds:
        raise MediaError(f"{seconds:.1f} s of audio, over the {spec.max_audio_seconds:g} s cap")
    return samples[0].numpy().astype(np.float32, copy=False)


def decode_video(data: bytes, spec: MediaSpec) -> np.ndarray:
    """Every frame as uint8 (T, 3, H, W): one layout for all videos (transformers infers a batch's layout
    from its first video, so mixing layouts would silently corrupt the others)."""
    from torchcodec.decoders import VideoDecoder

    decoder = VideoDecoder(data, dimension_order="NCHW")
    meta = decoder.metadata
    frames = len(decoder)
    if frames > spec.max_video_frames:
        raise MediaError(f"{frames} frames, over the {spec.max_video_frames} frame cap")
    duration = meta.duration_seconds
    if duration is not None and duration > spec.max_video_seconds:
        raise MediaError(f"{duration:.1f} s of video, over the {spec.max_video_seconds:g} s cap")
    if meta.width and meta.height and meta.width * meta.height > spec.max_image_pixels:
        raise MediaError(
            f"{meta.width}x{meta.height} frames are {meta.width * meta.height:,} pixels each, "
            f"over the {spec.max_image_pixels:,} pixel cap"
        )
    if frames == 0:
        raise MediaError("cannot decode as video: no frames")
    return decoder.get_frames_in_range(0, frames).data.numpy()


# ----------------------------------------------------------------------------------------------- words


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{round(n / scale, 1):g} {unit}"
    return f"{n} B"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _decoder_message(exc: BaseException) -> str:
    text = _first_line(exc)
    text = re.sub(r"^\w+, \S+\.cpp:\d+, ", "", text)  # torchcodec's C++ source location
    text = re.sub(r" <_io\.BytesIO object at 0x[0-9a-f]+>", "", text)  # PIL's file object
    match = re.match(r"The best (\w+) stream is unknown", text)
    if match:
        text = f"no {match.group(1)} stream"
    return f"{type(exc).__name__}: {text}"[:300]
