"""Incremental embedding of a corpus and its queries into Parquet embedding shards, in one execution.

per side: read ─► prepare (normalise, content hash, validate) ─► co-partition by id with the previous
night's embeddings (reuse a row's embedding when id, content hash and model id+revision all match; mark
duplicate ids) ─► one block schema for both sides
union of the sides ─► resolve media (CPU, only when an input has media values) ─► embed the rest (ONE actor
pool: one model load serves documents and queries) ─► each task writes its block's rows
`id, content_hash, embedding_model, embedded_run, embedding, stage, error` per side, and its error rows.

Every night writes the whole table under its own run (reused rows copied): a run is self-contained, the
previous night's files are only read, and deleting an old run never breaks a newer one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from actors.embedder import PREFIX, ROW_EMBED_SIDE, SIDES, EmbedderSpec, EmbedWorker, Side
from actors.media.spec import UNTRUSTED_TASK_RETRIES
from actors.model_source import source_fingerprint
from actors.pool import PoolSpec
from pipelines.refresh.content_hash import content_hashes
from pipelines.refresh.embed_output import ID, WRITTEN_SCHEMA, SideInput, finish_side, write_embedded
from pipelines.refresh.join import co_partition, join_tables, partitions_for
from pipelines.runs.info import resolved_dtype, value_key
from pipelines.storage import uris
from pipelines.storage.tables import read_files, read_table
from schemas import columns as c
from schemas.tables import normalize_to


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


def attach_previous(
    rows: pa.Table, previous: pa.Table | None, side: Side, duplicates: dict[str, int] | None = None
) -> pa.Table:
    """One partition (all rows of its ids): duplicate ids become error rows (every copy: which one is
    right is unknowable), then rows whose (id, content hash) match a previous embedding get it.
    `duplicates` ({id: copies} over the whole input, counted on the driver) lets any block stand in for
    a partition."""
    id_col = ID[side]
    if previous is not None:
        rows = join_tables(rows, previous, [id_col, c.CONTENT_HASH])
    ids = rows.column(id_col).combine_chunks()
    dup = duplicates if duplicates is not None else duplicate_ids(ids)
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


def duplicate_ids(ids: pa.Array) -> dict[str, int]:
    return {v["values"]: v["counts"] for v in pc.value_counts(ids.drop_null()).to_pylist() if v["counts"] > 1}


def resolve_side_media(table: pa.Table, spec, side: Side) -> Iterator[pa.Table]:
    """The media stage for `doc_*` / `query_*` columns, one or more output tables whose payloads stay under
    `spec.media_block_bytes`. The stage knows pairs (`query_*`, `candidate_*`), so document columns are
    presented to it as candidate columns and renamed back."""
    from actors.media.loader import resolve_media_blocks

    if side == "query":
        yield from resolve_media_blocks(table, spec)
        return
    mapping = {f"doc_{m}": f"candidate_{m}" for m in c.MEDIA_MODALITIES}
    mapping |= {c.media_payload_column(k): c.media_payload_column(v) for k, v in mapping.items()}
    back = {v: k for k, v in mapping.items()}
    renamed = table.rename_columns([mapping.get(n, n) for n in table.column_names])
    for out in resolve_media_blocks(renamed, spec):
        yield out.rename_columns([back.get(n, n) for n in out.column_names])


def _reusable(table: pa.Table, side: Side, tag: str) -> pa.Table:
    keep = pc.and_(pc.equal(table.column(c.EMBEDDING_MODEL), tag), pc.is_null(table.column(c.ERROR)))
    return table.filter(keep).select([ID[side], c.CONTENT_HASH, c.EMBEDDING, c.EMBEDDED_RUN])


# ----------------------------------------------------------------------------------------- the stage


def unified_schema(dim: int | None) -> pa.Schema:
    """The columns a block of either side carries into the shared media stage and actor pool: both sides'
    id and content columns (the other side's null), hash, row error, the reused embedding when a previous
    night has one (of width `dim`), and the row's side."""
    fields = [
        f
        for side in SIDES
        for f in input_schema(side)
        if f.name not in (c.CONTENT_HASH, c.ROW_ERROR, c.ROW_STAGE)
    ]
    fields += [f for f in input_schema("document") if f.name in (c.CONTENT_HASH, c.ROW_ERROR, c.ROW_STAGE)]
    if dim is not None:
        fields += [f for f in previous_schema("document", dim) if f.name in (c.EMBEDDING, c.EMBEDDED_RUN)]
    return pa.schema([*fields, pa.field(ROW_EMBED_SIDE, pa.string())])


def embed_sides(
    sides: Sequence[SideInput],
    *,
    spec: EmbedderSpec,
    pool: PoolSpec,
    run_id: str,
    rows_per_partition: int,
    driver_rows: int = 0,
    media=None,
    worker_cls=EmbedWorker,
) -> dict[Side, dict[str, int]]:
    """Embed `sides` (corpus, queries or both) in ONE Ray Data execution: one actor pool, one model load per
    actor, blocks of both sides through the same media stage and actors, each side embedded as
    `encode_document` / `encode_query` would. Each block's rows are written by the task that holds them
    (embeddings and error rows, one file each per side), and the counts come back with the file names, so
    nothing is read back. Returns per side {"rows", "embedded", "reused", "failed"}. `media` (a MediaSpec)
    turns the media stage on; a side of at most `driver_rows` rows skips the shuffle (`_side_rows`).
    Assumes `ray.init` was called."""
    tag = model_tag(spec, pool)
    fingerprint = source_fingerprint(spec.model)  # each actor checks the bytes it loads against it
    dim = next((_previous_dimension(s.previous) for s in sides if s.previous is not None), None)
    schema = unified_schema(dim)
    parts = [_side_rows(s, tag, schema, dim, rows_per_partition, driver_rows) for s in sides]
    ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    if media is not None:
        ds = ds.map_batches(
            resolve_side_media,
            fn_kwargs={"spec": media, "side": "document"},  # query_* and doc_* columns in one pass
            batch_size=pool.block_rows,
            batch_format="pyarrow",
            num_cpus=1,
            memory=media.task_memory(),  # as in the rerank pipeline: keeps fetch/decode out of the model actors
            max_retries=UNTRUSTED_TASK_RETRIES,
            udf_modifying_row_count=False,
        )
    ds = ds.map_batches(
        worker_cls,
        fn_constructor_kwargs={"spec": spec, "side": None, "torch_threads": pool.torch_threads},
        fn_kwargs={"fingerprint": fingerprint},
        batch_format="pyarrow",
        udf_modifying_row_count=False,
        **pool.actor_options(),
    )
    targets = {s.side: (s.output, s.errors) for s in sides}
    ds = ds.map_batches(
        write_embedded,
        fn_kwargs={"targets": targets, "tag": tag, "run_id": run_id},
        batch_format="pyarrow",
        batch_size=None,
    )
    for s in sides:
        uris.remove(s.output)
        uris.remove(s.errors)
    blocks = [t for t in ds.iter_batches(batch_format="pyarrow", batch_size=None) if t.num_rows]
    written = pa.concat_tables(blocks) if blocks else WRITTEN_SCHEMA.empty_table()
    return {s.side: finish_side(s, written.filter(pc.equal(written.column("side"), s.side))) for s in sides}


def _side_rows(
    s: SideInput, tag: str, schema: pa.Schema, dim: int | None, rows_per_partition: int, driver_rows: int
):
    """read ─► prepare ─► co-partition by id with the previous night's reusable embeddings (duplicate ids
    marked) ─► the unified block schema. A side whose input and previous embeddings are at most
    `driver_rows` rows each needs no shuffle: its duplicate ids are counted and the previous embeddings
    read on the driver, and every block is joined against them."""
    ds = ray.data.read_parquet(s.files, filesystem=uris.pyarrow_filesystem(s.files[0]))
    ds = ds.map_batches(prepare_rows, fn_kwargs={"side": s.side}, batch_format="pyarrow")
    previous_rows = uris.count_rows(uris.list_parquet(s.previous)) if s.previous is not None else 0
    if max(s.rows, previous_rows) <= driver_rows:
        ids = pc.cast(read_files(s.files, [ID[s.side]]).column(ID[s.side]), pa.string()).combine_chunks()
        previous = None
        if s.previous is not None:
            previous = normalize_to(
                _reusable(read_table(s.previous), s.side, tag), previous_schema(s.side, dim)
            )
        known = ray.put((duplicate_ids(ids), previous))
        ds = ds.map_batches(_attach_known, fn_kwargs={"known": known, "side": s.side}, batch_format="pyarrow")
        return ds.map_batches(_unify, fn_kwargs={"side": s.side, "schema": schema}, batch_format="pyarrow")
    right, right_schema = None, None
    if s.previous is not None:
        right_schema = previous_schema(s.side, dim)
        right = ray.data.read_parquet(
            uris.list_parquet(s.previous), filesystem=uris.pyarrow_filesystem(s.previous)
        )
        right = right.map_batches(_reusable, fn_kwargs={"side": s.side, "tag": tag}, batch_format="pyarrow")
    ds = co_partition(
        ds,
        right,
        key=[ID[s.side]],
        num_partitions=partitions_for(s.rows, rows_per_partition),
        fn=attach_previous,
        left_schema=input_schema(s.side),
        right_schema=right_schema,
        fn_kwargs={"side": s.side},
    )
    return ds.map_batches(_unify, fn_kwargs={"side": s.side, "schema": schema}, batch_format="pyarrow")


def _attach_known(rows: pa.Table, known, side: Side) -> pa.Table:
    duplicates, previous = ray.get(known) if isinstance(known, ray.ObjectRef) else known
    return attach_previous(rows, previous, side, duplicates)


def _unify(table: pa.Table, side: Side, schema: pa.Schema) -> pa.Table:
    tagged = table.append_column(ROW_EMBED_SIDE, pa.array([side] * table.num_rows, pa.string()))
    return normalize_to(tagged, schema)


def _previous_dimension(previous: str) -> int:
    """The embedding width of the previous table, from a Parquet footer (no data read)."""
    field = uris.read_schema(uris.list_parquet(previous)[0]).field(c.EMBEDDING)
    if not pa.types.is_fixed_size_list(field.type):
        raise ValueError(
            f"{previous}: column {c.EMBEDDING!r} has type {field.type}, expected a fixed-size list"
        )
    return field.type.list_size
