"""Ranking: one home for ordering scored rows per query (1 = best score; ties by candidate_id ascending,
then input order), optionally fused with the first stage's scores (`pipelines.rerank.fuse`: `rank` then
orders by `fused_score`, same ties) and cut to top-k, whichever way the rows reach it.

`rank_group` ranks one query's rows, or many queries at once: in a `map_groups` over a hash shuffle, or on
the driver for small outputs. Query-clustered input skips the shuffle (`rank_clustered`, below), exactly,
or reports that it is not.

Query-clustered input keeps each query's rows contiguous in one file (the refresh writes its candidates so,
and retrieval output usually is). Row keys number each file's rows in order (`pipelines.rerank.read`), so a
query's rows hold consecutive keys. A piece (the rows one actor call scored) holds runs of consecutive
keys. A query whose rows in a piece form one key range strictly inside one run (touching neither end) has
no rows anywhere else: it is ranked by the piece's own task, which writes its ranked and error rows next to
the other pieces' outputs. A query touching a run's end may continue in another piece; those rows (at most
two queries a run) are set aside and ranked together afterwards: on the driver when they are few (up to
`rank_on_driver_rows`), else through a hash shuffle of those rows alone.

Exactness does not rest on trusting the input. Each task returns the ids of the queries it ranked; the
driver checks that no query was ranked by two tasks or also has rows set aside. When that fails, or a
piece sets aside more than two queries per run (clustered input has at most the first and the last), the
caller removes what was written and ranks through the hash shuffle.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from pipelines.rerank.fuse import Fusion, fused_scores
from pipelines.storage import uris
from pipelines.storage.tables import write_file
from schemas import columns as c
from schemas.stages import Stage
from schemas.tables import ERRORS_SCHEMA, FUSED_SCORE_FIELD, RANKED_SCHEMA

RANK = Stage("rank_per_query", needs=(c.QUERY_ID, c.CANDIDATE_ID, c.SCORE), adds=(c.RANK,))


def ranked_columns(schema_names: list[str], keep: Sequence[str] = ()) -> list[str]:
    """The ranked output's columns: the contract's (`fused_score` after `score` when present), the
    pass-through ones present, then the kept ones."""
    extra = [name for name in c.PASSTHROUGH if name in schema_names]
    base = [*RANKED_SCHEMA.names, *extra]
    if c.FUSED_SCORE in schema_names:
        base.insert(base.index(c.SCORE) + 1, c.FUSED_SCORE)
    return [*base, *(name for name in keep if name not in base)]


def ranking_columns(schema_names: Sequence[str], keep: Sequence[str] = ()) -> list[str]:
    """What a scored row brings into the ranking shuffle: the ranked table's columns (without `rank`, made
    there) and the row key that orders ties by input order."""
    cols = [n for n in ranked_columns(list(schema_names), keep) if n != c.RANK]
    return [n for n in (*cols, c.ROW_KEY) if n in schema_names]


def rank_group(
    table: pa.Table, top_k: int | None = None, keep: Sequence[str] = (), fusion: Fusion | None = None
) -> pa.Table:
    """Rank the rows of `table` per query: one query's group (as `map_groups` hands it) or many at once
    (ranking on the driver); each query's rows must all be here. Order within a query: score desc,
    candidate_id asc, then input order (the row key when present; Arrow's sort is stable), so duplicate
    candidate ids get distinct, deterministic ranks and no row is lost. With `fusion`, each row's
    `fused_score` is made from its query's rows (its rank by score in that order, for rrf) and the order
    is by fused_score instead, same ties; top-k is applied after. Rows come out by query, then rank.
    `keep`: input columns carried into the output unchanged (`--keep-columns`)."""
    if fusion is not None:
        order, ranks = _order(table, c.SCORE)
        by_score = np.empty(table.num_rows, np.int64)
        by_score[order] = ranks
        table = table.append_column(c.FUSED_SCORE, fused_scores(table, fusion, by_score))
    order, ranks = _order(table, c.FUSED_SCORE if fusion is not None else c.SCORE)
    out = table.take(pa.array(order)).append_column(c.RANK, pa.array(ranks.astype(np.int32)))
    if top_k is not None:
        out = out.filter(pa.array(ranks <= top_k))
    cols = ranked_columns(out.column_names, keep)
    return out.select(cols).cast(_schema_for(out.select(cols)))


def _order(table: pa.Table, by: str) -> tuple[np.ndarray, np.ndarray]:
    """The ranking order of `table`'s rows by the column `by` (row positions, by query, then `by` desc,
    candidate_id asc, row key asc), and each position's rank within its query (1 = best)."""
    keys = [(c.QUERY_ID, "ascending"), (by, "descending"), (c.CANDIDATE_ID, "ascending")]
    if c.ROW_KEY in table.column_names:
        keys.append((c.ROW_KEY, "ascending"))
    order = pc.sort_indices(table, sort_keys=keys).to_numpy()
    queries = table.column(c.QUERY_ID).take(pa.array(order)).to_numpy(zero_copy_only=False)
    position = np.arange(len(order))
    starts = np.flatnonzero(np.r_[True, queries[1:] != queries[:-1]]) if len(order) else position
    ranks = position - starts[np.searchsorted(starts, position, side="right") - 1] + 1
    return order, ranks


def _schema_for(table: pa.Table) -> pa.Schema:
    known = {f.name: f for f in (*RANKED_SCHEMA, FUSED_SCORE_FIELD)}
    fields = [known.get(n, table.schema.field(n)) for n in table.column_names]
    return pa.schema(fields)


def to_errors(table: pa.Table) -> pa.Table:
    bad = table.filter(pc.is_valid(table.column(c.ROW_ERROR)))
    return pa.table(
        {
            c.QUERY_ID: bad.column(c.QUERY_ID),
            c.CANDIDATE_ID: bad.column(c.CANDIDATE_ID),
            c.STAGE: bad.column(c.ROW_STAGE),
            c.ERROR: bad.column(c.ROW_ERROR),
        },
        schema=ERRORS_SCHEMA,
    )


def only_scored(table: pa.Table, keep: Sequence[str] = ()) -> pa.Table:
    """The scored rows, with only the columns ranking needs (ids, score, the row key for ties, pass-through
    and kept columns): nothing else enters the ranking shuffle."""
    lean = ranking_columns(table.column_names, keep)
    return table.filter(pc.is_null(table.column(c.ROW_ERROR))).select(lean)


def split_piece(table: pa.Table) -> tuple[np.ndarray, np.ndarray, bool]:
    """(local, edge, clustered): boolean masks over `table`'s rows, local rows belonging to queries whose
    rows here form one range of consecutive row keys strictly inside a run of consecutive keys, every
    other row an edge row; `clustered` is False when more than two queries per run are edge queries."""
    n = table.num_rows
    if n == 0:
        return np.zeros(0, bool), np.zeros(0, bool), True
    keys = table.column(c.ROW_KEY).to_numpy()
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    run_start = np.r_[True, sorted_keys[1:] != sorted_keys[:-1] + 1]
    run_end = np.r_[run_start[1:], True]
    queries = pc.dictionary_encode(table.column(c.QUERY_ID).take(pa.array(order))).combine_chunks()
    codes = queries.indices.to_numpy(zero_copy_only=False)
    first = np.full(len(queries.dictionary), n, np.int64)
    last = np.full(len(queries.dictionary), -1, np.int64)
    np.minimum.at(first, codes, np.arange(n))
    np.maximum.at(last, codes, np.arange(n))
    count = np.bincount(codes, minlength=len(queries.dictionary))
    # A query is local when its rows are one contiguous stretch of the sorted keys, no run starts or ends
    # inside that stretch (one run of consecutive keys), and the stretch touches neither end of its run.
    boundaries = np.cumsum(run_start)  # run number of each sorted row
    contiguous = (last - first + 1 == count) & (last >= 0)
    safe_first = np.clip(first, 0, n - 1)
    safe_last = np.clip(last, 0, n - 1)
    one_run = boundaries[safe_first] == boundaries[safe_last]
    interior = ~run_start[safe_first] & ~run_end[safe_last]
    local_query = contiguous & one_run & interior
    edge_queries = int(np.count_nonzero(~local_query & (count > 0)))
    local = np.empty(n, bool)
    local[order] = local_query[codes]
    return local, ~local, edge_queries <= 2 * int(run_start.sum())


def read_for_ranking(uri: str, keep: Sequence[str]) -> pa.Table:
    """A scored piece's columns that ranking and the errors table need (ids, score, row key, pass-through
    and kept columns, the error and its stage)."""
    fs, path = uris.filesystem(uri)
    with fs.open(path, "rb") as f:  # one open: the footer gives the names, then the columns are read
        piece = pq.ParquetFile(f)
        wanted = [*ranking_columns(piece.schema_arrow.names, keep), c.ROW_ERROR, c.ROW_STAGE]
        return piece.read(columns=list(dict.fromkeys(wanted)))


def rank_piece(
    items: pa.Table,
    dirs: dict[str, str],
    top_k: int | None,
    keep: Sequence[str],
    fusion: Fusion | None = None,
) -> pa.Table:
    """A `map_batches` function over piece URIs: rank each piece's local queries (`rank_group`) and write
    them, the piece's error rows and its edge rows under `dirs` ("ranked", "errors", "edges"), named after
    the piece; return per piece the local query ids, the edge row count and whether the piece looked
    unclustered (then nothing is written)."""
    out = {"local_ids": [], "edges": [], "unclustered": []}
    for uri in items.column("uri").to_pylist():
        table = read_for_ranking(uri, keep)
        local, edge, clustered = split_piece(table)
        out["unclustered"].append(not clustered)
        out["edges"].append(int(edge.sum()))
        if not clustered:
            out["local_ids"].append([])
            continue
        name = uri.rsplit("/", 1)[-1]
        errors = to_errors(table)
        if errors.num_rows:
            write_file(errors, dirs["errors"], name)
        scored = only_scored(table.filter(pa.array(local)), keep)
        if scored.num_rows:
            write_file(rank_group(scored, top_k, keep, fusion), dirs["ranked"], name)
        if edge.any():
            write_file(table.filter(pa.array(edge)), dirs["edges"], name)
        out["local_ids"].append(pc.unique(scored.column(c.QUERY_ID)).to_pylist())
    return pa.table(
        {
            "local_ids": pa.array(out["local_ids"], pa.list_(pa.string())),
            "edges": pa.array(out["edges"], pa.int64()),
            "unclustered": pa.array(out["unclustered"], pa.bool_()),
        }
    )


def rank_clustered(
    pieces: list[str],
    dirs: dict[str, str],
    top_k: int | None,
    keep: Sequence[str],
    fusion: Fusion | None = None,
):
    """Rank `pieces` without a shuffle (see the module), writing under `dirs` ("ranked", "errors",
    "edges"). Returns (local query ids, edge row count, edge files), or None when the input is not
    clustered (the caller removes the folders and ranks through the shuffle). The edge rows are still to
    be ranked by the caller, and checked to share no query with the local ids (`edges_are_apart`)."""
    results = (
        ray.data.from_items([{"uri": p} for p in pieces], override_num_blocks=max(1, len(pieces)))
        .map_batches(
            rank_piece,
            fn_kwargs={"dirs": dirs, "top_k": top_k, "keep": tuple(keep), "fusion": fusion},
            batch_size=1,
            batch_format="pyarrow",
        )
        .take_all()
    )
    if any(r["unclustered"] for r in results):
        return None
    local: set[str] = set()
    for r in results:
        ids = r["local_ids"] or []  # unique within a piece
        if not local.isdisjoint(ids):
            return None  # a query ranked by two tasks: its rows are not contiguous in one file
        local.update(ids)
    edge_rows = sum(r["edges"] for r in results)
    files = uris.list_parquet(dirs["edges"]) if edge_rows else []
    return local, edge_rows, files


def edges_are_apart(local: set[str], edge_query_ids: pa.Array) -> bool:
    """True when no query of the set-aside rows was also ranked by a piece's task."""
    return local.isdisjoint(pc.unique(edge_query_ids).to_pylist())
