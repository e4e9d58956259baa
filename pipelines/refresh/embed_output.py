"""What the embedding stage writes: each block's rows per side as an embeddings file and its error rows as
an errors file, written by the task that holds the block; the driver then keeps exactly the files the
finished tasks reported and sums their counts (`pipelines.refresh.embed`)."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from actors.embedder import ROW_EMBED_SIDE, Side
from pipelines.storage.tables import keep_only, write_file
from schemas import columns as c
from schemas.tables import ERRORS_SCHEMA

ID = {"document": c.DOC_ID, "query": c.QUERY_ID}


@dataclass(frozen=True)
class SideInput:
    """One side of a night to embed: its Parquet files and rows (from metadata, sizing the shuffle), where
    its embeddings and its error rows go, and the previous night's embeddings to reuse (or None)."""

    side: Side
    files: list[str]
    rows: int
    output: str
    errors: str
    previous: str | None = None


def embeddings_schema(side: Side, dim: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field(ID[side], pa.string()),
            pa.field(c.CONTENT_HASH, pa.string()),
            pa.field(c.EMBEDDING_MODEL, pa.string()),
            pa.field(c.EMBEDDED_RUN, pa.string()),
            pa.field(c.EMBEDDING, pa.list_(pa.float32(), dim)),
            pa.field(c.STAGE, pa.string()),
            pa.field(c.ERROR, pa.string()),
        ]
    )


def to_embedding_table(table: pa.Table, side: Side, tag: str, run_id: str) -> pa.Table:
    error = table.column(c.ROW_ERROR)
    ok = pc.is_null(error)
    embedded_run = table.column(c.EMBEDDED_RUN) if c.EMBEDDED_RUN in table.column_names else None
    if embedded_run is None or pa.types.is_null(embedded_run.type):
        embedded_run = pa.nulls(table.num_rows, pa.string())
    embedded_run = pc.if_else(ok, pc.coalesce(embedded_run, pa.scalar(run_id)), pa.scalar(None, pa.string()))
    out = pa.table(
        {
            ID[side]: table.column(ID[side]),
            c.CONTENT_HASH: table.column(c.CONTENT_HASH),
            c.EMBEDDING_MODEL: pa.array([tag] * table.num_rows, pa.string()),
            c.EMBEDDED_RUN: embedded_run,
            c.EMBEDDING: table.column(c.EMBEDDING),
            c.STAGE: table.column(c.ROW_STAGE),
            c.ERROR: error,
        }
    )
    return out.cast(embeddings_schema(side, table.column(c.EMBEDDING).type.list_size))


WRITTEN_SCHEMA = pa.schema(
    [
        pa.field("side", pa.string()),
        pa.field("file", pa.string()),
        pa.field("errors_file", pa.string()),
        pa.field("rows", pa.int64()),
        pa.field("embedded", pa.int64()),
        pa.field("failed", pa.int64()),
    ]
)


def write_embedded(table: pa.Table, targets: dict, tag: str, run_id: str) -> pa.Table:
    """map_batches UDF after the actors: write each side's rows of this block as an embeddings file (and
    its error rows as an errors file) under `targets[side]` = (embeddings dir, errors dir); return one row
    per side written: the files and the counts (rows, embedded this run, failed)."""
    out = []
    sides = table.column(ROW_EMBED_SIDE)
    for side, (output, errors_dir) in targets.items():
        part = table.filter(pc.equal(sides, side))
        if not part.num_rows:
            continue
        embedded = to_embedding_table(part, side, tag, run_id)
        bad = _errors_block(embedded, side)
        ok = pc.is_null(embedded.column(c.ERROR))
        # Embedded now: no reused embedding came with the row (a reused one keeps its run, which is this run
        # id's own when an overwrite reuses the run it replaces).
        came = part.column(c.EMBEDDED_RUN) if c.EMBEDDED_RUN in part.column_names else None
        this_run = pc.and_(ok, pc.is_null(came)) if came is not None else ok
        out.append(
            {
                "side": side,
                "file": write_file(embedded, output),
                "errors_file": write_file(bad, errors_dir) if bad.num_rows else None,
                "rows": embedded.num_rows,
                "embedded": pc.sum(pc.cast(this_run, pa.int64())).as_py() or 0,
                "failed": bad.num_rows,
            }
        )
    return pa.Table.from_pylist(out, schema=WRITTEN_SCHEMA)


def finish_side(s: SideInput, written: pa.Table) -> dict[str, int]:
    """Keep exactly the files the finished tasks reported (a retried task's first attempt may have left
    one behind), give the errors folder an empty file when no row failed, and sum the counts."""
    files = set(written.column("file").to_pylist())
    if s.rows and not files:
        raise RuntimeError(f"embedding {s.side}s wrote no file under {s.output}")
    keep_only(s.output, files)
    errors = {f for f in written.column("errors_file").to_pylist() if f is not None}
    keep_only(s.errors, errors)
    if not errors:
        write_file(ERRORS_SCHEMA.empty_table(), s.errors)
    rows, embedded, failed = (pc.sum(written.column(k)).as_py() or 0 for k in ("rows", "embedded", "failed"))
    return {"rows": rows, "embedded": embedded, "reused": rows - embedded - failed, "failed": failed}


def _errors_block(table: pa.Table, side: Side) -> pa.Table:
    bad = table.filter(pc.is_valid(table.column(c.ERROR)))
    ids = bad.column(ID[side])
    none = pa.nulls(bad.num_rows, pa.string())
    return pa.table(
        {
            c.QUERY_ID: ids if side == "query" else none,
            c.CANDIDATE_ID: none if side == "query" else ids,
            c.STAGE: bad.column(c.STAGE),
            c.ERROR: bad.column(c.ERROR),
        },
        schema=ERRORS_SCHEMA,
    )
