"""The scoring checkpoint: scored blocks committed as durable pieces while the run goes, so a rerun of the
same run id scores only the pairs no committed piece holds.

Every input row carries a stable key, `__row_key` = file index << 40 | row in file (files in sorted
order, which the run identity pins). A scored block is committed as `<output>/_scored/piece-<id>-<rows>.parquet`
(`<id>`: a hash of the block's row keys, so a retried block replaces its piece; `<rows>`: its row count,
so a piece that can no longer be read still says how many pairs it held) with `uris.write_atomically`: on
a local disk written aside, fsynced and renamed; on an object store one PUT, whose object appears whole.
The pieces hold every column ranking and the errors table need. There is no "done" marker: scoring is
complete when the committed keys cover the input, and the checkpoint is removed only after
`manifest.json` is written.

The driver lists the pieces only on resume and at the end, always fresh (`uris.list_names`); progress in
between comes from the row counts the scoring actors hand back. A piece that cannot be read on resume (a
torn write, a damaged object) is removed and its pairs scored again, counted in `Resumed`.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from actors.rows import key_digest
from pipelines.runs.lease import check_fence
from pipelines.storage import uris
from schemas import columns as c

logger = logging.getLogger("ray_rerank")
_FOOTERS: dict[str, tuple[int, dict]] = {}  # piece -> (rows, stats): pieces are immutable once committed
STATS_KEY = b"ray_rerank.stats"
LEASE_KEY = b"ray_rerank.lease_generation"
ROW_BITS = 40  # rows per file before the key overflows into the file index: 1.1e12
PIECE_PREFIX = "piece-"
_ROWS_IN_NAME = re.compile(r"-(\d+)\.parquet$")


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
        """Committed piece files (never a temporary one), sorted; listed fresh from the storage."""
        return [
            uris.join(self.directory, n)
            for n in uris.list_names(self.directory)
            if n.startswith(PIECE_PREFIX) and n.endswith(".parquet")
        ]

    def committed_keys(self) -> np.ndarray:
        """The sorted row keys of every committed piece (8 bytes a pair: 8 MB per million)."""
        return self.resume().keys

    def resume(self) -> Resumed:
        """The committed row keys, sorted. A piece that cannot be read (truncated, damaged) is removed, so
        its pairs are scored again; how many such pieces and the pairs they held come back with the keys."""
        keys, unreadable, rescored = [], 0, 0
        for uri in self.pieces():
            try:
                keys.append(_read_column(uri, c.ROW_KEY))
            except (pa.ArrowInvalid, EOFError) as exc:  # its bytes, not the storage: a store error fails
                unreadable += 1
                rescored += piece_rows_from_name(uri) or 0
                logger.warning(
                    "checkpoint piece %s cannot be read (%s); its pairs are scored again", uri, exc
                )
                _FOOTERS.pop(uri, None)
                uris.remove(uri)
        committed = np.sort(np.concatenate(keys)) if keys else np.zeros(0, dtype=np.int64)
        return Resumed(committed, unreadable, rescored)

    def coverage(
        self, pieces: list[str], file_rows: list[int], stats: Callable[[pa.Table], dict] | None = None
    ) -> tuple[int, int]:
        """(missing, duplicated): input rows no piece holds, and copies of rows held by more than one
        piece. Complete means every row key of every input file is in a piece (a bitmap per input file, one
        byte a row; never a set of all keys). Overlapping pieces are resolved deterministically: in piece
        name order, a row an earlier piece holds is dropped from the later one (rewritten in place), so
        ranking sees one copy (and `stats`, as `commit_piece` keeps them, are made again for it)."""
        seen = [np.zeros(n, dtype=bool) for n in file_rows]
        duplicated = 0
        for uri in sorted(pieces):
            keys = _read_column(uri, c.ROW_KEY).astype(np.int64)
            files, rows = keys >> ROW_BITS, keys & ((1 << ROW_BITS) - 1)
            again = np.zeros(len(keys), dtype=bool)
            for f in np.unique(files):
                mine = np.flatnonzero(files == f)
                if f >= len(seen) or rows[mine].max(initial=-1) >= len(seen[f]):
                    raise RuntimeError(f"checkpoint piece {uri} holds row keys outside the input")
                again[mine] = seen[f][rows[mine]]
                _, first = np.unique(rows[mine], return_index=True)
                within = np.ones(len(mine), dtype=bool)
                within[first] = False
                again[mine] |= within
                seen[f][rows[mine]] = True
            if again.any():
                duplicated += int(again.sum())
                self._drop_rows(uri, again, stats)
        missing = int(sum((~s).sum() for s in seen))
        return missing, duplicated

    def _drop_rows(self, uri: str, drop: np.ndarray, stats) -> None:
        fs, path = uris.filesystem(uri)
        with fs.open(path, "rb") as f:
            table = pq.read_table(f)
        kept = table.filter(pa.array(~drop))
        if stats is not None:
            meta = {**(kept.schema.metadata or {}), STATS_KEY: json.dumps(stats(kept)).encode()}
            kept = kept.replace_schema_metadata(meta)
        _FOOTERS.pop(uri, None)
        uris.write_atomically(uri, lambda f: pq.write_table(kept, f))

    def committed_rows(self, pieces: list[str] | None = None) -> int:
        """Rows in committed pieces (`pieces`, else listed now), from their footers (memoised per piece)."""
        return sum(_footer(uri)[0] for uri in (self.pieces() if pieces is None else pieces))

    def stats(self, pieces: list[str] | None = None) -> dict[str, float]:
        """The per-piece stats `commit_piece` kept in the footers of `pieces` (else listed now), combined:
        summed, except `min_*` and `max_*` keys (the smallest / largest)."""
        totals: dict[str, float] = {}
        for uri in self.pieces() if pieces is None else pieces:
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


@dataclass
class Resumed:
    """What an attempt takes over from the checkpoint: `keys` (sorted row keys of the readable pieces),
    `pieces_unreadable` (pieces removed because they could not be read) and `pairs_rescored` (the pairs
    those pieces held, scored again by this attempt)."""

    keys: np.ndarray
    pieces_unreadable: int = 0
    pairs_rescored: int = 0
    pairs_duplicated: int = 0  # found at the end: copies of pairs held by more than one piece, dropped


def commit_piece(
    table: pa.Table,
    directory: str,
    stats: Callable[[pa.Table], dict] | None = None,
    fence: tuple[str, str, int] | None = None,
) -> pa.Table:
    """Write one scored block as a piece, atomically; return its row count (a `map_batches` function:
    the driver counts progress from these). `stats(table)` (small, JSON-able) is kept in the piece's
    footer, so totals never need a data pass. `fence`: (output, lease token, generation) of the driver the
    block was scored for; the piece is committed only while that driver still holds the run's lease, and
    carries the generation in its footer."""
    if table.num_rows:
        if fence is not None:
            check_fence(fence[0], fence[1])
        final = uris.join(directory, f"{PIECE_PREFIX}{piece_name(table)}-{table.num_rows}.parquet")
        meta = dict(table.schema.metadata or {})
        if stats is not None:
            meta[STATS_KEY] = json.dumps(stats(table)).encode()
        if fence is not None:
            meta[LEASE_KEY] = str(fence[2]).encode()
        if meta:
            table = table.replace_schema_metadata(meta)
        uris.write_atomically(final, lambda f: pq.write_table(table, f))
    return pa.table({"committed": [table.num_rows]})


def piece_rows_from_name(uri: str) -> int | None:
    """The row count a piece's name carries (None for a name without one)."""
    found = _ROWS_IN_NAME.search(uri.rsplit("/", 1)[-1].removeprefix(PIECE_PREFIX))
    return int(found.group(1)) if found else None


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
