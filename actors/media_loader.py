"""The media stage: fetch and decode the image/audio/video references of a block of pairs on CPU workers.

`MediaSpec` is the small frozen spec, validated on the driver. `resolve_media` is the stage, a
`map_batches(batch_format="pyarrow")` function: for every media column (`query_image`, `candidate_video`,
...) it fetches each distinct reference of the block once (fsspec; urllib for http(s)), concurrently, each
under a deadline and a byte cap, decodes it (PIL for images; torchcodec for audio and video) under the
decode caps, and writes the decoded payload (see `actors.media_codec`) into the internal column
`__<column>`. A reference that cannot be used marks its rows with `__error` / `__stage = "media"` and a
reason that names the column, the reference and what went wrong; the other rows go on to be scored.

This module is the stage and its concurrency (one thread pool per block, a watchdog on each fetch's
deadline). Fetching one reference lives in `actors.media_fetch`, decoding in `actors.media_decode`, and the
spec with its error type in `actors.media_spec`; `MediaSpec` and `fetch_bytes` are re-exported here.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

import pyarrow as pa

from actors.media_codec import payload_array
from actors.media_decode import decode
from actors.media_fetch import connect_clients, fetch_bytes
from actors.media_spec import MediaError, MediaSpec
from actors.rows import RowErrors, column_or_nulls, replace_columns
from schemas import columns as c

__all__ = [
    "MEDIA_COLUMNS",
    "PAYLOAD_COLUMNS",
    "STAGE",
    "MediaError",
    "MediaSpec",
    "fetch_bytes",
    "resolve_media",
]

MEDIA_COLUMNS = [f"{side}_{m}" for side in ("query", "candidate") for m in c.MEDIA_MODALITIES]
PAYLOAD_COLUMNS = [c.media_payload_column(col) for col in MEDIA_COLUMNS]
STAGE = "media"


def resolve_media(table: pa.Table, spec: MediaSpec) -> pa.Table:
    """Add a payload column for every media column of `table` and mark rows whose media failed.

    Rows that already carry `__error` (from validation) or a `__cached_score` (scored by an earlier run)
    are not fetched. Each distinct reference is fetched once and decoded once per modality, however many
    rows and columns use it.
    """
    errors = RowErrors(table, STAGE)
    cached = column_or_nulls(table, c.ROW_CACHED_SCORE)
    skip = [not errors.ok(i) or s is not None for i, s in enumerate(cached)]
    columns = [col for col in MEDIA_COLUMNS if col in table.column_names]
    refs = {col: table.column(col).to_pylist() for col in columns}
    wanted: dict[str, set[str]] = {}  # reference -> modalities it is decoded as
    for col in columns:
        modality = col.rsplit("_", 1)[1]
        for i, ref in enumerate(refs[col]):
            if ref is not None and not skip[i]:
                wanted.setdefault(ref, set()).add(modality)

    decoded = _fetch_and_decode(wanted, spec)

    added: dict[str, pa.Array] = {}
    for col in columns:
        modality = col.rsplit("_", 1)[1]
        payloads: list[bytes | None] = []
        for i, ref in enumerate(refs[col]):
            result = decoded.get((ref, modality)) if ref is not None and not skip[i] else None
            if isinstance(result, MediaError):
                errors.fail(i, f"{col} {ref!r}: {result}")
                result = None
            payloads.append(result)
        added[c.media_payload_column(col)] = payload_array(payloads)
    return replace_columns(table, {**added, **errors.columns()})


def _fetch_and_decode(wanted: dict[str, set[str]], spec: MediaSpec) -> dict[tuple[str, str], Any]:
    """{(reference, modality): payload bytes or MediaError}. Fetches run on a thread pool; each is given
    `timeout_s` from the moment it starts, enforced both by socket timeouts and by this watchdog (a fetch
    stuck past its deadline is abandoned, its thread left to its own socket timeout)."""
    results: dict[tuple[str, str], Any] = {}
    if not wanted:
        return results
    connect_clients(wanted, spec)
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
                        data if isinstance(data, MediaError) else decode(modality, data, spec)
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
