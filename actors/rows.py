"""Row plumbing shared by the stages that fill a block's rows: the media stage, the reranker, the embedder.

A block arrives with `__error` / `__stage` possibly set by an earlier stage. A worker leaves those rows
alone, marks each row it cannot handle with a one-line reason, and returns every row: a dropped pair
corrupts a ranking. When a batched model call raises, the call is repeated one item at a time, so only the
items that fail become error rows and the rest of the batch still gets its values.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from schemas import columns as c


def column_or_nulls(table: pa.Table, name: str) -> list:
    """The column as a Python list, or all None when the block does not have it."""
    if name in table.column_names:
        return table.column(name).to_pylist()
    return [None] * table.num_rows


def replace_columns(table: pa.Table, columns: Mapping[str, pa.Array]) -> pa.Table:
    """`table` with `columns` appended in order, each replacing a column of the same name."""
    out = table.drop_columns([name for name in columns if name in table.column_names])
    for name, array in columns.items():
        out = out.append_column(name, array)
    return out


class RowErrors:
    """The `__error` / `__stage` columns of one block, as lists a stage fills in any order.

    `stage` is the name written to `__stage` (and to errors/) for the rows this stage fails."""

    def __init__(self, table: pa.Table, stage: str):
        self.reasons: list[str | None] = column_or_nulls(table, c.ROW_ERROR)
        self.stages: list[str | None] = column_or_nulls(table, c.ROW_STAGE)
        self.stage = stage

    def ok(self, row: int) -> bool:
        return self.reasons[row] is None

    def fail(self, row: int, reason: str) -> None:
        self.reasons[row], self.stages[row] = reason, self.stage

    def columns(self) -> dict[str, pa.Array]:
        """The two columns, for `replace_columns`."""
        return {
            c.ROW_ERROR: pa.array(self.reasons, pa.string()),
            c.ROW_STAGE: pa.array(self.stages, pa.string()),
        }


def failure_reason(what: str, exc: BaseException) -> str:
    """One line for errors/: what failed, the exception's type and the first line of its message."""
    return f"{what}: {type(exc).__name__}: {exc}".splitlines()[0]


def isolate_failures(
    fn: Callable[[list], Any], items: list, what: str, fill: Any
) -> tuple[np.ndarray, dict[int, str]]:
    """`fn(items)` as an array. If that raises, `fn([item])[0]` for each item instead, so that one bad item
    costs one row: it gets `fill` in the array and a reason (`what` failed: ...) in {index: reason}."""
    try:
        return np.asarray(fn(items)), {}
    except Exception:
        pass  # fall through: find the failing items one by one
    values: list = []
    bad: dict[int, str] = {}
    for k, item in enumerate(items):
        try:
            values.append(fn([item])[0])
        except Exception as exc:  # one bad item becomes one error row
            values.append(fill)
            bad[k] = failure_reason(what, exc)
    return np.asarray(values), bad


def key_digest(keys) -> str:
    """A name for a set of rows: the hash of their `__row_key`s (the same rows give the same name on every
    attempt; used for checkpoint pieces and quarantine markers)."""
    return hashlib.sha1(np.ascontiguousarray(keys, dtype=np.int64).tobytes()).hexdigest()[:32]
