"""Rank scored pieces without a shuffle when the input is query-clustered, exactly, or report that it is not.

Query-clustered input keeps each query's rows contiguous in one file (the refresh writes its candidates so,
and retrieval output usually is). Row keys number each file's rows in order (`pipelines.read_pairs`), so a
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

from pipelines import io
from pipelines.driver_io import write_file
from pipelines.rank_per_query import rank_group, ranking_columns
from schemas import columns as c


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
    fs, path = io.filesystem(uri)
    with fs.open(path, "rb") as f:  # one open: the footer gives the names, then the columns are read
        piece = pq.ParquetFile(f)
        wanted = [*ranking_columns(piece.schema_arrow.names, keep), c.ROW_ERROR, c.ROW_STAGE]
        return piece.read(columns=list(dict.fromkeys(wanted)))


def rank_piece(items: pa.Table, dirs: dict[str, str], top_k: int | None, keep: Sequence[str]) -> pa.Table:
    """A `map_batches` function over piece URIs: rank each piece's local queries and write them, the
    piece's error rows and its edge rows under `dirs` ("ranked", "errors", "edges"), named after the
    piece; return per piece the local query ids, the edge row count and whether the piece looked
    unclustered (then nothing is written)."""
    from pipelines.rerank import only_scored, to_errors

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
            write_file(rank_group(scored, top_k, keep), dirs["ranked"], name)
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


def rank_clustered(pieces: list[str], dirs: dict[str, str], top_k: int | None, keep: Sequence[str]):
    """Rank `pieces` without a shuffle (see the module), writing under `dirs` ("ranked", "errors",
    "edges"). Returns (local query ids, edge row count, edge files), or None when the input is not
    clustered (the caller removes the folders and ranks through the shuffle). The edge rows are still to
    be ranked by the caller, and checked to share no query with the local ids (`edges_are_apart`)."""
    results = (
        ray.data.from_items([{"uri": p} for p in pieces], override_num_blocks=max(1, len(pieces)))
        .map_batches(
            rank_piece,
            fn_kwargs={"dirs": dirs, "top_k": top_k, "keep": tuple(keep)},
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
    files = io.list_parquet(dirs["edges"]) if edge_rows else []
    return local, edge_rows, files


def edges_are_apart(local: set[str], edge_query_ids: pa.Array) -> bool:
    """True when no query of the set-aside rows was also ranked by a piece's task."""
    return local.isdisjoint(pc.unique(edge_query_ids).to_pylist())
