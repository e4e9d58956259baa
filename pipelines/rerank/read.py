"""Read pairs with a stable key per row, skipping rows a committed checkpoint piece already holds.

The unit of reading is a Parquet row group (its first row and size come from the footer, read on the
driver); each read task adds `__row_key` = file index << 40 | row in file (`pipelines.runs.checkpoint`). The
key is the same on every attempt of a run because the run identity pins the input files, their sizes and
modification times. A row group whose rows are all committed is not read at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from pipelines.runs.checkpoint import ROW_BITS, row_keys
from pipelines.storage import uris
from schemas import columns as c


@dataclass(frozen=True)
class Fragment:
    file_index: int
    uri: str
    row_group: int
    first_row: int
    rows: int

    def keys(self) -> tuple[int, int]:
        start = (self.file_index << ROW_BITS) + self.first_row
        return start, start + self.rows


def fragments(files: list[str]) -> list[Fragment]:
    """Every row group of `files`, in order (footers only, no data read)."""
    out = []
    for index, uri in enumerate(files):
        fs, path = uris.filesystem(uri)
        with fs.open(path, "rb") as f:
            meta = pq.ParquetFile(f).metadata
        first = 0
        for g in range(meta.num_row_groups):
            rows = meta.row_group(g).num_rows
            out.append(Fragment(index, uri, g, first, rows))
            first += rows
    return out


def pending(frags: list[Fragment], committed: np.ndarray) -> list[Fragment]:
    """The fragments with at least one row no committed piece holds (`committed` sorted)."""
    keep = []
    for frag in frags:
        lo, hi = frag.keys()
        done = np.searchsorted(committed, hi) - np.searchsorted(committed, lo)
        if done < frag.rows:
            keep.append(frag)
    return keep


def read_keyed_pairs(files: list[str], committed: np.ndarray) -> ray.data.Dataset:
    """A Dataset of the input rows not yet committed, each with `__row_key`; one read task a row group."""
    todo = pending(fragments(files), committed)
    items = [frag.__dict__ for frag in todo] or [{"file_index": -1}]
    committed_ref = ray.put(committed)
    return ray.data.from_items(items, override_num_blocks=max(1, len(items))).map_batches(
        _read_fragments, fn_kwargs={"committed": [committed_ref]}, batch_size=1, batch_format="pyarrow"
    )


def _read_fragments(items: pa.Table, committed: list) -> pa.Table:
    from pipelines.runs.checkpoint import drop_committed

    tables = []
    for item in items.to_pylist():
        if item["file_index"] < 0:  # nothing left to read: an empty block keeps the plan valid
            continue
        fs, path = uris.filesystem(item["uri"])
        with fs.open(path, "rb") as f:
            table = pq.ParquetFile(f).read_row_group(item["row_group"])
        keys = row_keys(item["file_index"], item["first_row"], table.num_rows)
        tables.append(table.append_column(c.ROW_KEY, keys))
    if not tables:
        return pa.table({c.ROW_KEY: pa.array([], pa.int64())})
    table = pa.concat_tables(tables, promote_options="default")
    return drop_committed(table, ray.get(committed[0]))
