"""Small tables handled in the driver process: read, written and checked without a Ray Data execution.

A Ray Data execution costs seconds of fixed start-up (operators, tasks, often a shuffle's actors) whatever
its size; for a table of a few hundred rows (the queries, the night's candidates, a score-cache lookup, an
evaluation) that is all of its cost. Stages that have a driver path take it when their input is at most
`--driver-rows` rows (`DRIVER_ROWS` by default) and keep the cluster path for anything bigger; both give the
same rows. The writers here are also used inside tasks: a file is written with `uris.write_atomically`
(aside, fsynced and renamed on a local disk; one PUT on an object store), so a reader never sees half of it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.storage import uris
from schemas import columns as c

DRIVER_ROWS = 50_000
_NONE = object()


def read_table(uri: str, columns: list[str] | None = None) -> pa.Table:
    """Every Parquet file under `uri` (a file, a folder of shards or a glob) as one table of `columns`
    (those a file lacks come back null, as Ray's reader would give them)."""
    return read_files(uris.list_parquet(uri), columns)


def read_files(files: list[str], columns: list[str] | None = None) -> pa.Table:
    return pa.concat_tables([read_file(f, columns) for f in files], promote_options="default")


def read_file(file_uri: str, columns: list[str] | None = None) -> pa.Table:
    fs, path = uris.filesystem(file_uri)
    with fs.open(path, "rb") as f:
        parquet = pq.ParquetFile(f)
        names = parquet.schema_arrow.names
        table = parquet.read(columns=[n for n in columns if n in names] if columns else None)
    for name in columns or ():
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, pa.string()))
    return table.select(columns) if columns else table


def iter_blocks(files: list[str], columns: list[str], rows: int) -> Iterator[pa.Table]:
    """The rows of `files`, `rows` at a time (a block never spans two files), only `columns`."""
    for uri in files:
        fs, path = uris.filesystem(uri)
        with fs.open(path, "rb") as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=rows, columns=columns):
                yield pa.Table.from_batches([batch])


def write_file(table: pa.Table, directory: str, name: str | None = None) -> str:
    """Write `table` as one Parquet file in `directory`, atomically (`uris.write_atomically`): `name`,
    replacing a file of that name (a retried task writes the same file again), else a new
    `part-<uuid>.parquet`. Returns its URI."""
    fs, path = uris.filesystem(directory)
    final = f"{path}/{name or f'part-{uuid.uuid4().hex}.parquet'}"
    uris.write_atomically(uris.qualify(fs, final), lambda f: pq.write_table(table, f))
    return uris.qualify(fs, final)


def keep_only(directory: str, keep: set[str]) -> None:
    """Remove every file under `directory` but `keep` (URIs as `write_file` returned them): what a task
    attempt that was retried, or killed half-way, left behind."""
    fs, path = uris.fresh(directory)
    if not fs.exists(path):
        return
    for found in fs.find(path):
        if uris.qualify(fs, found) not in keep:
            fs.rm(found)


def clustered_by_query(directory: str) -> bool:
    """True when every query's rows in the Parquet files under `directory` are contiguous within one
    file (what lets ranking group a query's rows without a shuffle). Reads the `query_id` column only, one
    row group at a time; only the first row of each run of equal ids reaches Python."""
    seen: set[str | None] = set()
    for uri in uris.list_parquet(directory):
        previous: object = _NONE
        for block in iter_blocks([uri], [c.QUERY_ID], 65536):
            ids = block.column(c.QUERY_ID).combine_chunks()
            if not len(ids):
                continue
            changed = pc.fill_null(pc.not_equal(ids.slice(1), ids.slice(0, len(ids) - 1)), True)
            for qid in [ids[0].as_py(), *ids.slice(1).filter(changed).to_pylist()]:
                if qid == previous:
                    continue
                if qid in seen:
                    return False
                seen.add(qid)
                previous = qid
    return True
