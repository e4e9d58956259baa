"""Co-partitioned joins over Ray Data without a polars dependency.

`Dataset.join` needs polars, which is not in the pinned environment, and its pyarrow fallback cannot carry
fixed-size-list payloads (embeddings). This does the same hash join by hand: tag both inputs, `union`,
hash-`repartition` on the key (`sort=True`, as `groupby().map_groups` does, so every key's rows sit in one
block), then run a vectorised per-partition function on each block. The shuffle is Ray's (spillable, disk
based when enabled); the per-partition work is Arrow, never a Python loop per group.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from schemas import columns as c
from schemas.tables import normalize_to

LEFT, RIGHT = 0, 1
MAX_PARTITIONS = 1000  # beyond this, per-partition overhead (every map task splits into each) dominates


def partitions_for(rows: int, rows_per_partition: int) -> int:
    """Shuffle partitions for `rows` rows: `rows_per_partition` each, at most MAX_PARTITIONS. A partition
    is one block (the hash repartition never splits it) and one reduce task's memory."""
    return min(MAX_PARTITIONS, max(1, -(-rows // max(1, rows_per_partition))))


def co_partition(
    left: ray.data.Dataset,
    right: ray.data.Dataset | None,
    *,
    key: list[str],
    num_partitions: int,
    fn: Callable[..., pa.Table],
    left_schema: pa.Schema | None = None,
    right_schema: pa.Schema | None = None,
    fn_kwargs: dict | None = None,
) -> ray.data.Dataset:
    """Bring the rows of `left` and `right` with equal `key` into one block and call
    `fn(left_rows, right_rows, **fn_kwargs)` per block (`right_rows` is None when `right` is None).

    With a right dataset both schemas are required (the shuffle concatenates blocks of one schema only):
    both sides are projected onto the union of the two schemas (a column on both sides, such as a second
    join key, must have one type), and a block carrying a column its schema does not declare fails
    loudly rather than losing it. A block may hold no left row: `fn` then gets an empty left table."""
    if right is None:
        tagged = left.map_batches(_tag, fn_kwargs={"side": LEFT, "own": None, "union": None}, **_WHOLE_BLOCKS)
        return tagged.repartition(num_partitions, keys=key, sort=True).map_batches(
            _apply,
            fn_kwargs={"fn": fn, "left_schema": None, "right_schema": None, "fn_kwargs": fn_kwargs or {}},
            **_WHOLE_BLOCKS,
        )
    if left_schema is None or right_schema is None:
        raise ValueError("co_partition: pass left_schema and right_schema with a right dataset")
    clash = [
        f.name
        for f in right_schema
        if f.name in left_schema.names and left_schema.field(f.name).type != f.type
    ]
    if clash:
        raise ValueError(f"co_partition: columns {clash} have different types on the two sides")
    union = pa.schema([*left_schema, *(f for f in right_schema if f.name not in left_schema.names)])
    tagged = left.map_batches(
        _tag, fn_kwargs={"side": LEFT, "own": left_schema, "union": union}, **_WHOLE_BLOCKS
    )
    tagged = tagged.union(
        right.map_batches(
            _tag, fn_kwargs={"side": RIGHT, "own": right_schema, "union": union}, **_WHOLE_BLOCKS
        )
    )
    return tagged.repartition(num_partitions, keys=key, sort=True).map_batches(
        _apply,
        fn_kwargs={
            "fn": fn,
            "left_schema": left_schema,
            "right_schema": right_schema,
            "fn_kwargs": fn_kwargs or {},
        },
        **_WHOLE_BLOCKS,
    )


_WHOLE_BLOCKS = {"batch_format": "pyarrow", "batch_size": None}


def _tag(table: pa.Table, side: int, own: pa.Schema | None, union: pa.Schema | None) -> pa.Table:
    if own is not None:
        extra = [n for n in table.column_names if n not in own.names]
        if extra:
            raise ValueError(f"co_partition: rows carry columns {extra} that the declared schema lacks")
        table = normalize_to(normalize_to(table, own), union)
    return table.append_column(c.ROW_SIDE, pa.array(np.full(table.num_rows, side, dtype=np.int8)))


def _apply(table: pa.Table, fn, left_schema, right_schema, fn_kwargs: dict) -> pa.Table:
    side = table.column(c.ROW_SIDE)
    left_rows = table.filter(pc.equal(side, LEFT)).drop_columns([c.ROW_SIDE])
    if right_schema is None:
        return fn(left_rows, None, **fn_kwargs)
    right_rows = normalize_to(table.filter(pc.equal(side, RIGHT)), right_schema)
    return fn(normalize_to(left_rows, left_schema), right_rows, **fn_kwargs)


def join_tables(left: pa.Table, right: pa.Table, key: list[str], how: str = "left outer") -> pa.Table:
    """`left` joined with `right` on `key` (`how`: "left outer" or "inner"), keeping every left column and
    adding right's other columns. Joins on row indices, so payloads of any type (embeddings) come along;
    a key repeated on the right matches its first row only, so a left row is never duplicated."""
    if how not in ("left outer", "inner"):
        raise ValueError(f"join type {how!r} is not one of 'left outer', 'inner'")
    li = left.select(key).append_column("__l", pa.array(np.arange(left.num_rows, dtype=np.int64)))
    ri = right.select(key).append_column("__r", pa.array(np.arange(right.num_rows, dtype=np.int64)))
    ri = ri.group_by(key, use_threads=False).aggregate([("__r", "min")])
    ri = ri.select([*key, "__r_min"]).rename_columns([*key, "__r"])
    joined = li.join(ri, keys=key, join_type=how, use_threads=False)
    joined = joined.sort_by([("__l", "ascending")])
    out = left.take(joined.column("__l"))
    for name in right.column_names:
        if name not in key:
            if name in out.column_names:
                out = out.drop_columns([name])
            out = out.append_column(right.schema.field(name), right.column(name).take(joined.column("__r")))
    return out
