"""Stage: rank one query's candidates (1 = best score; ties by candidate_id ascending), optionally top-k."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.stages import Stage
from schemas import columns as c
from schemas.tables import RANKED_SCHEMA

RANK = Stage("rank_per_query", needs=(c.QUERY_ID, c.CANDIDATE_ID, c.SCORE), adds=(c.RANK,))


def ranked_columns(schema_names: list[str], keep: Sequence[str] = ()) -> list[str]:
    """The ranked output's columns: the contract's, the pass-through ones present, then the kept ones."""
    extra = [name for name in c.PASSTHROUGH if name in schema_names]
    base = [*RANKED_SCHEMA.names, *extra]
    return [*base, *(name for name in keep if name not in base)]


def ranking_columns(schema_names: Sequence[str], keep: Sequence[str] = ()) -> list[str]:
    """What a scored row brings into the ranking shuffle: the ranked table's columns (without `rank`, made
    there) and the row key that orders ties by input order."""
    cols = [n for n in ranked_columns(list(schema_names), keep) if n != c.RANK]
    return [n for n in (*cols, c.ROW_KEY) if n in schema_names]


def rank_group(table: pa.Table, top_k: int | None = None, keep: Sequence[str] = ()) -> pa.Table:
    """Rank the rows of `table` per query: one query's group (as `map_groups` hands it) or many at once
    (ranking on the driver). Order within a query: score desc, candidate_id asc, then input order (the
    row key when present; Arrow's sort is stable), so duplicate candidate ids get distinct, deterministic
    ranks and no row is lost. Rows come out by query, then rank. `keep`: input columns carried into the
    output unchanged (`--keep-columns`)."""
    keys = [(c.QUERY_ID, "ascending"), (c.SCORE, "descending"), (c.CANDIDATE_ID, "ascending")]
    if c.ROW_KEY in table.column_names:
        keys.append((c.ROW_KEY, "ascending"))
    out = table.take(pc.sort_indices(table, sort_keys=keys))
    queries = out.column(c.QUERY_ID).to_numpy(zero_copy_only=False)
    position = np.arange(out.num_rows)
    starts = np.flatnonzero(np.r_[True, queries[1:] != queries[:-1]]) if out.num_rows else position
    ranks = position - starts[np.searchsorted(starts, position, side="right") - 1] + 1
    out = out.append_column(c.RANK, pa.array(ranks.astype(np.int32)))
    if top_k is not None:
        out = out.filter(pa.array(ranks <= top_k))
    cols = ranked_columns(out.column_names, keep)
    return out.select(cols).cast(_schema_for(out.select(cols)))


def _schema_for(table: pa.Table) -> pa.Schema:
    fields = [
        RANKED_SCHEMA.field(n) if n in RANKED_SCHEMA.names else table.schema.field(n)
        for n in table.column_names
    ]
    return pa.schema(fields)
