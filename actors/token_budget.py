"""Length-sorted micro-batches under a token budget (padded tokens counted)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MicroBatch:
    """Row positions (into the caller's list) and the padded length every row of the batch occupies."""

    rows: np.ndarray
    padded_length: int

    @property
    def padded_tokens(self) -> int:
        return int(len(self.rows) * self.padded_length)


def pack_by_tokens(
    lengths: np.ndarray, batch_tokens: int, max_rows: int | None = None, min_fill: float = 0.0
) -> list[MicroBatch]:
    """Sort rows by real token length (longest first) and cut greedy micro-batches whose padded size,
    rows x longest row, stays within `batch_tokens`. A single row longer than the budget forms its own batch:
    it must still be scored, and the budget is a target, not a reason to drop a pair.

    `min_fill` also closes a batch at the first row shorter than `min_fill` x the batch's longest row, so
    the sparse long tail of a skewed distribution does not pad a large batch of much shorter rows."""
    if batch_tokens < 1:
        raise ValueError(f"batch_tokens must be >= 1, got {batch_tokens}")
    if not 0.0 <= min_fill <= 1.0:
        raise ValueError(f"min_fill must be within [0, 1], got {min_fill}")
    order = np.argsort(-np.asarray(lengths), kind="stable")
    batches: list[MicroBatch] = []
    start = 0
    n = len(order)
    while start < n:
        longest = int(lengths[order[start]])
        fit = max(1, batch_tokens // max(longest, 1))
        if max_rows is not None:
            fit = min(fit, max_rows)
        stop = min(n, start + fit)
        if min_fill > 0:
            short = np.nonzero(np.asarray(lengths)[order[start + 1 : stop]] < min_fill * longest)[0]
            if len(short):
                stop = start + 1 + int(short[0])
        batches.append(MicroBatch(rows=order[start:stop], padded_length=longest))
        start = stop
    return batches


def pack_by_groups(
    lengths: np.ndarray, groups: list, batch_tokens: int, min_fill: float = 0.0
) -> list[MicroBatch]:
    """`pack_by_tokens` within each group (e.g. one query's candidates), so no micro-batch mixes groups.
    Rows whose group is None are packed together as one more group."""
    lengths = np.asarray(lengths)
    members: dict = {}
    for row, key in enumerate(groups):
        members.setdefault(key, []).append(row)
    batches: list[MicroBatch] = []
    for rows in members.values():
        rows = np.asarray(rows, dtype=np.int64)
        for batch in pack_by_tokens(lengths[rows], batch_tokens, min_fill=min_fill):
            batches.append(MicroBatch(rows=rows[batch.rows], padded_length=batch.padded_length))
    return batches


def padding_efficiency(lengths: np.ndarray, batches: list[MicroBatch]) -> float:
    """Real tokens / padded tokens over the batches (1.0 = no padding at all)."""
    padded = sum(b.padded_tokens for b in batches)
    return float(np.sum(lengths)) / padded if padded else 1.0
