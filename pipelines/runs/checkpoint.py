"""The scoring checkpoint: scored blocks committed as durable pieces while the run goes, so a rerun of the
same run id scores only the pairs no committed piece holds.

Every input row carries a stable key, `__row_key` = file index << 40 | row in file (files in sorted
order, which the run identity pins). A scored block is written to `<output>/_scored/.tmp-<id>.parquet`
and renamed to `piece-<id>.parquet` (`<id>`: a hash of the block's row keys, so a retried block replaces
its piece): readers list only `piece-*` names, so a half-written piece is never
read (on object stores the rename is a copy whose object appears whole). The pieces hold every column
ranking and the errors table need. There is no "done" marker: scoring is complete when the committed keys
cover the input, and the checkpoint is removed only after `manifest.json` is written.
"""

from __future__ import annotations

import json
import posixpath
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from actors.rows import key_digest
from pipelines.storage import uris
from schemas import columns as c

_FOOTERS: dict[str, tuple[int, dict]] = {}  # piece -> (rows, stats): pieces are immutable once committed
STATS_KEY = b"ray_rerank.stats"
ROW_BITS = 40  # rows per file before the key overflows into the file index: 1.1e12
PIECE_PREFIX = "piece-"


def row_keys(file_index: int, first_row: int, rows: int) -> pa.Array:
    start = (file_index << ROW_BITS) + first_row
    return pa.array(np.arange(start, start + rows, dtype=np.int64))


@dataclass(frozen=True)
class Checkpoint:
    """`<output>/_scored/`: committed pieces of one run."""

    output: str

    @property
    def directory(self) -> str:
        return uris.join(self.output, "_scored")

    def pieces(self) -> list[str]:
        """Committed piece files (never a temporary one), sorted."""
        if not uris.exists(self.directory):
            return []
        fs, path = uris.filesystem(self.directory)
        names = [posixpath.basename(p) for p in fs.ls(path, detail=False)]
        return sorted(
            uris.join(self.directory, n)
            for n in names
            if n.startswith(PIECE_PREFIX) and n.endswith(".parquet")
        )

    def committed_keys(self) -> np.ndarray:
        """The sorted row keys of every committed piece (8 bytes a pair: 8 MB per million)."""
        keys = [_read_column(f, c.ROW_KEY) for f in self.pieces()]
        return np.sort(np.concatenate(keys)) if keys else np.zeros(0, dtype=np.int64)

    def committed_rows(self) -> int:
        """Rows in committed pieces, from their footers (memoised per piece: cheap to poll)."""
        return sum(_footer(uri)[0] for uri in self.pieces())

    def stats(self) -> dict[str, float]:
        """The per-piece stats `commit_piece` kept in the footers, combined: summed, except `min_*` and
        `max_*` keys (the smallest / largest)."""
        totals: dict[str, float] = {}
        for uri in self.pieces():
            for key, value in _footer(uri)[1].items():
                if key not in totals:
                    totals[key] = value
                elif key.startswith(("min_", "max_")):
                    totals[key] = (min if key.startswith("min_") else max)(totals[key], value)
                else:
                    totals[key] += value
        return totals

    def remove(self) -> None:
        for uri in [u for u in _FOOTERS if u.startswith(self.directory + "/")]:
            del _FOOTERS[uri]
        uris.remove(self.directory)


def commit_piece(
    table: pa.Table, directory: str, stats: Callable[[pa.Table], dict] | None = None
) -> pa.Table:
    """Write one scored block as a piece, atomically; return its row count (a `map_batches` function).
    `stats(table)` (small, JSON-able) is kept in the piece's footer, so totals never need a data pass."""
    if table.num_rows:
        fs, path = uris.filesystem(directory)
        fs.makedirs(path, exist_ok=True)
        name = piece_name(table)
        tmp = f"{path}/.tmp-{name}-{uuid.uuid4().hex[:8]}.parquet"
        final = f"{path}/{PIECE_PREFIX}{name}.parquet"
        if stats is not None:
            meta = {**(table.schema.metadata or {}), STATS_KEY: json.dumps(stats(table)).encode()}
            table = table.replace_schema_metadata(meta)
        with fs.open(tmp, "wb") as f:
            pq.write_table(table, f)
        fs.mv(tmp, final)
    return pa.table({"committed": [table.num_rows]})


def piece_name(table: pa.Table) -> str:
    """A block's piece name: a hash of its row keys, so a block scored twice (its actor died after the
    commit, and Ray retried it) replaces its own piece instead of adding a second copy of its rows."""
    if c.ROW_KEY not in table.column_names:
        return uuid.uuid4().hex
    return key_digest(table.column(c.ROW_KEY).to_numpy())


def drop_committed(table: pa.Table, committed: np.ndarray) -> pa.Table:
    """The rows of `table` whose key no committed piece holds (a `map_batches` function)."""
    if not len(committed):
        return table
    keys = table.column(c.ROW_KEY).to_numpy()
    return table.filter(pa.array(~np.isin(keys, committed, assume_unique=False)))


def _read_column(uri: str, name: str) -> np.ndarray:
    fs, path = uris.filesystem(uri)
    with fs.open(path, "rb") as f:
        return pq.read_table(f, columns=[name]).column(name).to_numpy()


def _footer(uri: str) -> tuple[int, dict]:
    if uri not in _FOOTERS:
        fs, path = uris.filesystem(uri)
        with fs.open(path, "rb") as f:
            meta = pq.ParquetFile(f).metadata
        stats = (meta.metadata or {}).get(STATS_KEY)
        _FOOTERS[uri] = (meta.num_rows, json.loads(stats) if stats else {})
    return _FOOTERS[uri]
