"""The media stage's spec (fetch and decode limits, validated on the driver) and the error a reference that
cannot be used raises, shared by fetching (`actors.media.fetch`) and decoding (`actors.media.decode`)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from typing import Any

from actors.media.address_policy import Network, parse_networks
from actors.media.codec import AUDIO_SAMPLE_RATE
from schemas.settings import SettingError, setting


class MediaError(Exception):
    """A reference that cannot be used; the message is the reason written to errors/."""


# A task that handles untrusted bytes (fetch, decode, preprocess) is retried this many times when its worker
# dies, not forever as Ray Data's tasks are by default. A reference that crashes its decoder no longer
# kills the worker (decoding runs in a child process, `actors.media.sandbox`: the crash is that reference's
# error row), so these retries see what is not one reference's fault: a lost node, a worker killed for
# memory. What still runs untrusted input in the worker (the model's preprocessing) is bounded here too:
# input that keeps killing it ends the job instead of looping.
UNTRUSTED_TASK_RETRIES = 4
SCORE_FIELDS = ("audio_sample_rate",)  # every other setting refuses an item or not; none changes its content


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
    decode_timeout_s: float = setting(
        60.0,
        flag="decode-timeout",
        help="seconds allowed to decode one fetched reference (in a child process, killed when over)",
    )
    max_decoded_bytes: int = setting(
        96_000_000,
        help="largest decoded item, in bytes, computed from its header before decoding (width x height x 3 "
        "for images, frames x height x width x 3 for video, seconds x 16000 x 4 for audio)",
    )
    media_block_bytes: int = setting(
        96_000_000,
        help="decoded media one media task builds into one output block; a block of pairs whose media "
        "decode to more comes out as several smaller blocks, and the task's Ray memory request is sized "
        "from it",
    )
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
    allow_networks: tuple[str, ...] = setting(
        (),
        help="comma-separated CIDR ranges that http(s) references may reach besides public addresses, e.g. "
        "10.20.0.0/16 for an internal image server (default: none; loopback, private, link-local and other "
        "internal addresses are refused)",
        metavar="CIDR,...",
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
        try:
            parse_networks(self.allow_networks)
        except ValueError as exc:
            raise SettingError("allow_networks", str(exc)) from None
        if self.max_decoded_bytes > self.media_block_bytes:
            raise SettingError(
                "max_decoded_bytes",
                f"{self.max_decoded_bytes} is more than media_block_bytes ({self.media_block_bytes}); "
                "one decoded item must fit in a media block",
            )
        return self

    def networks(self) -> tuple[Network, ...]:
        """`allow_networks` parsed (validated on the driver)."""
        return parse_networks(self.allow_networks)

    def score_settings(self) -> dict:
        """The settings that change a score (what a decoded item becomes): part of a run's identity and of
        the score-cache key."""
        return {name: getattr(self, name) for name in SCORE_FIELDS}

    def row_settings(self) -> dict:
        """The settings that only decide which rows fail (caps, deadline, schemes, networks): part of a
        run's identity, not of the score-cache key (a cached score is the same score)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in SCORE_FIELDS}

    def task_memory(self) -> int:
        """Bytes a media task asks Ray for: the output block being built and the one before it, which Ray
        may still hold while it gathers output (2 x `media_block_bytes`), one item being decoded (the
        decoder's frames, in the task's decoding child, and the payload the task receives: 2 x
        `max_decoded_bytes`), and the fetched files waiting to be decoded (`fetch_threads` x `max_bytes`, a
        worst case)."""
        return 2 * self.media_block_bytes + 2 * self.max_decoded_bytes + self.fetch_threads * self.max_bytes

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def scheme_of(ref: str) -> str:
    """`s3` for s3://..., `file` for file://... and for plain local paths."""
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", ref)
    return match.group(1).lower() if match else "file"


def human_bytes(n: int) -> str:
    """`31 MB`, `200 kB`, `12 B`: sizes in messages."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{round(n / scale, 1):g} {unit}"
    return f"{n} B"


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
