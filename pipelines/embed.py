"""Incremental embedding of a corpus (or of queries) into Parquet embedding shards.

read ─► prepare (normalise, content hash, validate) ─► co-partition by id with the previous night's
embeddings (reuse a row's embedding when id, content hash and model id+revision all match; mark duplicate
ids) ─► resolve media (CPU, only when the input has media columns) ─► embed the rest (actor pool)
─► write `id, content_hash, embedding_model, embedded_run, embedding, stage, error`.

Every night writes the whole table under its own run (reused rows copied): a run is self-contained, the
previous night's files are only read, and deleting an old run never breaks a newer one.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from actors.embedder import PREFIX, EmbedderSpec, EmbedWorker, Side
from actors.pool import PoolSpec
from pipelines import io
from pipelines.content_hash import content_hashes
from pipelines.keyed_join import co_partition, join_tables, partitions_for
from pipelines.run_info import resolved_dtype, value_key
from schemas import columns as c
from schemas.tables import ERRORS_SCHEMA, normalize_to

ID = {"document": c.DOC_ID, "query": c.QUERY_ID}


def model_tag(spec: EmbedderSpec, pool: PoolSpec) -> str:
    """`<model>@<key>`: an embedding is reused only when this tag matches, i.e. the same weights (their
    fingerprint) and every setting that changes a vector (prompts, normalisation, max length, dtype)."""
    return f"{spec.model}@{value_key(spec, dtype=resolved_dtype(spec, pool))}"


def input_schema(side: Side) -> pa.Schema:
    prefix = PREFIX[side]
    return pa.schema(
        [
            pa.field(ID[side], pa.string()),
            *[pa.field(f"{prefix}_{m}", pa.string()) for m in c.MODALITIES],
            pa.field(c.CONTENT_HASH, pa.string()),
            pa.field(c.ROW_ERROR, pa.string()),
            pa.field(c.ROW_STAGE, pa.string()),
        ]
    )


def previous_schema(side: Side, dim: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field(ID[side], pa.string()),
            pa.field(c.CONTENT_HASH, pa.string()),
            pa.field(c.EMBEDDING, pa.list_(pa.float32(), dim)),
            pa.field(c.EMBEDDED_RUN, pa.string()),
        ]
    )


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


# ----------------------------------------------------------------------------------------- stages


def prepare_rows(table: pa.Table, side: Side) -> pa.Table:
    """Project onto the side's columns, hash the content, mark rows with a null id or no content."""
    prefix, id_col = PREFIX[side], ID[side]
    schema = input_schema(side)
    table = normalize_to(
        table, pa.schema([f for f in schema if f.name in (id_col, *c.content_columns(prefix))])
    )
    reasons: list[str | None] = [None] * table.num_rows
    has_content = np.zeros(table.num_rows, dtype=bool)
    for m in c.MODALITIES:
        has_content |= table.column(f"{prefix}_{m}").is_valid().to_numpy(zero_copy_only=False)
    for i, id_value in enumerate(table.column(id_col).to_pylist()):
        if id_value is None:
            reasons[i] = f"{id_col} is null"
        elif not has_content[i]:
            reasons[i] = f"{prefix} has no content: {prefix}_text/_image/_audio/_video all null"
    stages = ["validate" if r else None for r in reasons]
    return (
        table.append_column(c.CONTENT_HASH, content_hashes(table, prefix))
        .append_column(c.ROW_ERROR, pa.array(reasons, pa.string()))
        .append_column(c.ROW_STAGE, pa.array(stages, pa.string()))
    )


def attach_previous(rows: pa.Table, previous: pa.Table | None, side: Side) -> pa.Table:
    """One partition (all rows of its ids): duplicate ids become error rows (every copy: which one is
    right is unknowable), then rows whose (id, content hash) match a previous embedding get it."""
    id_col = ID[side]
    if previous is not None:
        rows = join_tables(rows, previous, [id_col, c.CONTENT_HASH])
    ids = rows.column(id_col).combine_chunks()
    dup = {v["values"]: v["counts"] for v in pc.value_counts(ids.drop_null()).to_pylist() if v["counts"] > 1}
    if not dup:
        return rows
    errors = rows.column(c.ROW_ERROR).to_pylist()
    stages = rows.column(c.ROW_STAGE).to_pylist()
    for i, value in enumerate(ids.to_pylist()):
        if value in dup and errors[i] is None:
            errors[i] = f"{id_col} {value!r} appears {dup[value]} times; ids must be unique"
            stages[i] = "validate"
    rows = rows.drop_columns([c.ROW_ERROR, c.ROW_STAGE])
    return rows.append_column(c.ROW_ERROR, pa.array(errors, pa.string())).append_column(
        c.ROW_STAGE, pa.array(stages, pa.string())
    )


def resolve_side_media(table: pa.Table, spec, side: Side) -> Iterator[pa.Table]:
    """The media stage for `doc_*` / `query_*` columns, one or more output tables whose payloads stay under
    `spec.media_block_bytes`. The stage knows pairs (`query_*`, `candidate_*`), so document columns are
    presented to it as candidate columns and renamed back."""
    from actors.media_loader import resolve_media_blocks

    if side == "query":
        yield from resolve_media_blocks(table, spec)
        return
    mapping = {f"doc_{m}": f"candidate_{m}" for m in c.MEDIA_MODALITIES}
    mapping |= {c.media_payload_column(k): c.media_payload_column(v) for k, v in mapping.items()}
    back = {v: k for k, v in mapping.items()}
    renamed = table.rename_columns([mapping.get(n, n) for n in table.column_names])
    for out in resolve_media_blocks(renamed, spec):
        yield out.rename_columns([back.get(n, n) for n in out.column_names])


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


def _reusable(table: pa.Table, side: Side, tag: str) -> pa.Table:
    keep = pc.and_(pc.equal(table.column(c.EMBEDDING_MODEL), tag), pc.is_null(table.column(c.ERROR)))
    return table.filter(keep).select([ID[side], c.CONTENT_HASH, c.EMBEDDING, c.EMBEDDED_RUN])


# ----------------------------------------------------------------------------------------- the stage


def embed_side(
    files: list[str],
    *,
    side: Side,
    spec: EmbedderSpec,
    pool: PoolSpec,
    output: str,
    run_id: str,
    rows: int,
    rows_per_partition: int,
    previous: str | None = None,
    media=None,
    worker_cls=EmbedWorker,
) -> None:
    """Embed `files` (corpus or queries) into `output`, reusing `previous` embeddings where unchanged.
    `rows` (the input row count, from Parquet metadata) sizes the shuffle; `media` (a MediaSpec) turns the
    media stage on. Assumes `ray.init` was called."""
    tag = model_tag(spec, pool)
    right, right_schema = None, None
    if previous is not None:
        right_schema = previous_schema(side, _previous_dimension(previous))
        right = ray.data.read_parquet(io.list_parquet(previous), filesystem=io.pyarrow_filesystem(previous))
        right = right.map_batches(_reusable, fn_kwargs={"side": side, "tag": tag}, batch_format="pyarrow")
    ds = ray.data.read_parquet(files, filesystem=io.pyarrow_filesystem(files[0]))
    ds = ds.map_batches(prepare_rows, fn_kwargs={"side": side}, batch_format="pyarrow")
    ds = co_partition(
        ds,
        right,
        key=[ID[side]],
        num_partitions=partitions_for(rows, rows_per_partition),
        fn=attach_previous,
        left_schema=input_schema(side),
        right_schema=right_schema,
        fn_kwargs={"side": side},
    )
    if media is not None:
        ds = ds.map_batches(
            resolve_side_media,
            fn_kwargs={"spec": media, "side": side},
            batch_size=pool.block_rows,
            batch_format="pyarrow",
            num_cpus=1,
            memory=media.task_memory(),  # as in the rerank pipeline: keeps fetch/decode out of the model actors
            udf_modifying_row_count=False,
        )
    ds = ds.map_batches(
        worker_cls,
        fn_constructor_kwargs={"spec": spec, "side": side, "torch_threads": pool.torch_threads},
        batch_format="pyarrow",
        udf_modifying_row_count=False,
        **pool.actor_options(),
    )
    ds = ds.map_batches(
        to_embedding_table, fn_kwargs={"side": side, "tag": tag, "run_id": run_id}, batch_format="pyarrow"
    )
    io.remove(output)
    ds.write_parquet(output, filesystem=io.pyarrow_filesystem(output))


def _previous_dimension(previous: str) -> int:
    """The embedding width of the previous table, from a Parquet footer (no data read)."""
    field = io.read_schema(io.list_parquet(previous)[0]).field(c.EMBEDDING)
    if not pa.types.is_fixed_size_list(field.type):
        raise ValueError(
            f"{previous}: column {c.EMBEDDING!r} has type {field.type}, expected a fixed-size list"
        )
    return field.type.list_size


def counts(output: str, side: Side, run_id: str) -> dict[str, int]:
    """Rows, embedded this run, reused from an earlier run, failed: from the written table's small columns."""
    ds = ray.data.read_parquet(output, filesystem=io.pyarrow_filesystem(output))
    stats = ds.select_columns([c.EMBEDDED_RUN, c.ERROR]).map_batches(
        _block_counts, fn_kwargs={"run_id": run_id}, batch_format="pyarrow", batch_size=None
    )
    total = stats.sum(["rows", "embedded", "failed"])
    rows, embedded, failed = (int(total[f"sum({k})"] or 0) for k in ("rows", "embedded", "failed"))
    return {"rows": rows, "embedded": embedded, "reused": rows - embedded - failed, "failed": failed}


def _block_counts(table: pa.Table, run_id: str) -> pa.Table:
    ok = pc.is_null(table.column(c.ERROR))
    this_run = pc.and_(ok, pc.equal(table.column(c.EMBEDDED_RUN), run_id))
    return pa.table(
        {
            "rows": [table.num_rows],
            "embedded": [pc.sum(pc.cast(this_run, pa.int64())).as_py() or 0],
            "failed": [table.num_rows - (pc.sum(pc.cast(ok, pa.int64())).as_py() or 0)],
        }
    )


def write_errors(output: str, side: Side, errors_dir: str) -> None:
    """The rows that could not be embedded, as an errors table (`candidate_id` = doc id for documents)."""
    io.remove(errors_dir)
    ds = ray.data.read_parquet(output, filesystem=io.pyarrow_filesystem(output))
    ds = ds.select_columns([ID[side], c.STAGE, c.ERROR]).map_batches(
        _errors_block, fn_kwargs={"side": side}, batch_format="pyarrow"
    )
    ds.write_parquet(errors_dir, filesystem=io.pyarrow_filesystem(errors_dir))


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
