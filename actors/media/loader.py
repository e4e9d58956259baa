"""The media stage: fetch and decode the image/audio/video references of a block of pairs on CPU workers.

`MediaSpec` is the small frozen spec, validated on the driver. `resolve_media_blocks` is the stage, a
generator `map_batches(batch_format="pyarrow")` function: for every media column (`query_image`,
`candidate_video`, ...) it fetches each distinct reference of the block once (fsspec; http(s) under the
address policy of `actors.media.address_policy`), concurrently, each under a deadline and a byte cap, decodes it
(PIL for images; torchcodec for audio and video) under the decode caps, and writes the decoded payload
(see `actors.media.codec`) into the internal column `__<column>`. Decoding runs in a child process
(`actors.media.sandbox`) killed at the decode deadline, so a decoder that crashes or runs on costs its
reference, not the worker. A reference that cannot be used marks its rows with `__error` /
`__stage = "media"` and a reason that names the column, the reference and what went wrong; the other rows
go on to be scored.

Memory is bounded per block, not only per item: rows are decoded in order and their payloads held under
`media_block_bytes` (`actors.media.payloads`); when the next item would take the block over it, the rows
done so far are yielded as one output table and the stage goes on with the rest, carrying over only the
payloads later rows still need. Fetches run at most `fetch_threads` ahead of the decoder, so the fetched
bytes waiting to be decoded are bounded too. `resolve_media` is the same stage returning one table.

This module is the stage and its concurrency (fetch threads that end by their deadline and are joined,
a watchdog on each fetch's deadline). Fetching one reference lives in `actors.media.fetch`, decoding in
`actors.media.decode` (which the child of `actors.media.sandbox` runs), and the spec with its error type in
`actors.media.spec`; `MediaSpec` and `fetch_bytes` are re-exported here.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, wait
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from actors.media.fetch import connect_clients, fetch_bytes
from actors.media.payloads import BlockPayloads, npy_header
from actors.media.sandbox import SANDBOX
from actors.media.spec import MediaError, MediaSpec
from actors.rows import RowErrors, column_or_nulls, replace_columns
from schemas import columns as c
from schemas.stages import Stage

__all__ = [
    "MEDIA",
    "MEDIA_COLUMNS",
    "PAYLOAD_COLUMNS",
    "STAGE",
    "MediaError",
    "MediaSpec",
    "fetch_bytes",
    "resolve_media",
    "resolve_media_blocks",
]

MEDIA_COLUMNS = [f"{side}_{m}" for side in ("query", "candidate") for m in c.MEDIA_MODALITIES]
PAYLOAD_COLUMNS = [c.media_payload_column(col) for col in MEDIA_COLUMNS]
STAGE = "media"
# The stage's contract (checked along the pipeline's chain on the driver): rows already failed are not
# fetched; each media column's decoded payload is added, and rows that fail get their error and stage.
MEDIA = Stage(
    STAGE,
    needs=(c.ROW_ERROR, c.ROW_STAGE),
    adds=(*PAYLOAD_COLUMNS, c.ROW_ERROR, c.ROW_STAGE),
)
JOIN_GRACE_S = 1.0  # after the last fetch's deadline, how long closing a block waits for its fetch threads


def resolve_media(table: pa.Table, spec: MediaSpec) -> pa.Table:
    """`resolve_media_blocks` as one table (its output blocks concatenated)."""
    return pa.concat_tables(list(resolve_media_blocks(table, spec)))


def resolve_media_blocks(table: pa.Table, spec: MediaSpec) -> Iterator[pa.Table]:
    """Yield the rows of `table`, in order, with a payload column for every media column and the rows
    whose media failed marked, in one or more tables whose payloads stay under `spec.media_block_bytes`.

    Rows that already carry `__error` (from validation) or a `__cached_score` (scored by an earlier run)
    are not fetched. Each distinct reference is fetched once and decoded once per modality, however many
    rows and columns use it.
    """
    plan = _Plan.of(table)
    if not plan.fetch_order:
        yield _emit(table, plan, BlockPayloads(0), 0, table.num_rows)
        return
    connect_clients(plan.fetch_order, spec)
    fetcher = _Fetcher(plan.fetch_order, spec)
    try:
        block = BlockPayloads(spec.media_block_bytes)
        start = 0
        for row in range(table.num_rows):
            for column, ref in plan.rows[row]:
                if (column, ref) in plan.failed or block.holds(column, ref):
                    continue
                data = fetcher.take(ref)
                for modality, columns in plan.uses[ref].items():
                    result = data if isinstance(data, MediaError) else SANDBOX.decode(modality, data, spec)
                    if isinstance(result, MediaError):
                        plan.failed.update({(col, ref): result for col in columns})
                        continue
                    array, header = np.ascontiguousarray(result), npy_header(result)
                    size = (len(header) + array.nbytes) * len(columns)
                    if not block.fits(size):
                        if row > start:
                            yield _emit(table, plan, block, start, row)
                            start = row
                        block = block.carry(plan.needed_from(row), size, spec.media_block_bytes)
                    for col in columns:
                        block.add(col, ref, array, header)
                    del array, result
                del data
        yield _emit(table, plan, block, start, table.num_rows)
    finally:
        fetcher.close()


@dataclass
class _Plan:
    """What a block needs: per row, its (media column, reference) pairs; per reference, the media columns
    that use it by modality, in the order the rows first need them; the last row that uses each pair."""

    errors: RowErrors
    rows: list[list[tuple[str, str]]]  # (media column, ref)
    uses: dict[str, dict[str, list[str]]]  # ref -> modality -> media columns
    last_use: dict[tuple[str, str], int]
    failed: dict[tuple[str, str], MediaError] = field(default_factory=dict)

    @property
    def fetch_order(self) -> list[str]:
        return list(self.uses)

    @classmethod
    def of(cls, table: pa.Table) -> _Plan:
        errors = RowErrors(table, STAGE)
        cached = column_or_nulls(table, c.ROW_CACHED_SCORE)
        columns = [col for col in MEDIA_COLUMNS if col in table.column_names]
        refs = {col: table.column(col).to_pylist() for col in columns}
        rows: list[list[tuple[str, str]]] = []
        uses: dict[str, dict[str, list[str]]] = {}
        last_use: dict[tuple[str, str], int] = {}
        for i in range(table.num_rows):
            needs = []
            if errors.ok(i) and cached[i] is None:
                for col in columns:
                    ref = refs[col][i]
                    if ref is None:
                        continue
                    needs.append((col, ref))
                    users = uses.setdefault(ref, {}).setdefault(col.rsplit("_", 1)[1], [])
                    if col not in users:
                        users.append(col)
                    last_use[(col, ref)] = i
            rows.append(needs)
        return cls(errors, rows, uses, last_use)

    def needed_from(self, row: int) -> list[tuple[str, str]]:
        """The (media column, reference) pairs rows from `row` on still use."""
        return [key for key, last in self.last_use.items() if last >= row]


def _emit(table: pa.Table, plan: _Plan, block: BlockPayloads, start: int, end: int) -> pa.Table:
    """Rows [start, end) of `table` with their payload columns and errors."""
    errors = plan.errors
    keys: dict[str, list[str | None]] = {
        col: [None] * (end - start) for col in MEDIA_COLUMNS if col in table.column_names
    }
    for i in range(start, end):
        for col, ref in plan.rows[i]:
            failure = plan.failed.get((col, ref))
            if failure is None:
                keys[col][i - start] = ref
            elif errors.ok(i):
                errors.fail(i, f"{col} {ref!r}: {failure}")
    added = {c.media_payload_column(col): block.column(col, col_keys) for col, col_keys in keys.items()}
    added[c.ROW_ERROR] = pa.array(errors.reasons[start:end], pa.string())
    added[c.ROW_STAGE] = pa.array(errors.stages[start:end], pa.string())
    return replace_columns(table.slice(start, end - start), added)


class _Fetcher:
    """Fetches references on `fetch_threads` threads, in the order the decoder will ask for them and at
    most that many ahead of it (so the fetched bytes waiting to be decoded are bounded). Each fetch is given
    `timeout_s` from the moment it starts, enforced by socket timeouts in the fetch and by `take`, which
    stops waiting at the deadline. `close` joins the threads: http(s) fetches end by their deadline."""

    def __init__(self, refs: list[str], spec: MediaSpec):
        self.spec = spec
        self.todo = deque(refs)
        self.window: dict[str, Future] = {}
        self.started: dict[str, float] = {}
        self.lock = threading.Lock()
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.threads = [
            threading.Thread(target=self._work, name=f"media-fetch-{i}", daemon=True)
            for i in range(min(spec.fetch_threads, len(refs)))
        ]
        for thread in self.threads:
            thread.start()
        self._fill()

    def _fill(self) -> None:
        while self.todo and len(self.window) < len(self.threads):
            ref = self.todo.popleft()
            self.window[ref] = future = Future()
            self.queue.put((ref, future))

    def _work(self) -> None:
        while (item := self.queue.get()) is not None:
            ref, future = item
            if not future.set_running_or_notify_cancel():
                continue
            with self.lock:
                self.started[ref] = time.monotonic()
            try:
                future.set_result(fetch_bytes(ref, self.spec))
            except MediaError as exc:  # kept as a result: without its traceback, which holds the fetch's
                future.set_result(exc.with_traceback(None))  # frames, and through them its socket
            except BaseException as exc:  # a bug, not a bad reference: re-raised by take
                future.set_exception(exc)

    def take(self, ref: str) -> bytes | MediaError:
        """The bytes of `ref` (the next reference in fetch order), or the MediaError saying why not."""
        future = self.window.pop(ref)
        try:
            while not future.done():
                wait([future], timeout=0.05)
                with self.lock:
                    began = self.started.get(ref)
                if not future.done() and began is not None and time.monotonic() - began > self.spec.timeout_s:
                    return MediaError(f"timed out after {self.spec.timeout_s:.1f} s")
            return future.result()
        finally:
            self._fill()

    def close(self) -> None:
        """Cancel what has not started and wait for the threads, each fetch to its deadline at most."""
        for future in self.window.values():
            future.cancel()
        for _ in self.threads:
            self.queue.put(None)
        with self.lock:
            last = max(self.started.values(), default=time.monotonic()) + self.spec.timeout_s
        for thread in self.threads:
            thread.join(timeout=max(0.0, last + JOIN_GRACE_S - time.monotonic()))
