"""Exact top-k retrieval over the whole corpus, one corpus block at a time, written as candidate pairs.

query embeddings (small) ─► one matrix on the driver (read there), `ray.put` once
corpus embeddings (stay distributed) ─► map_batches per block: scores = Q·Dᵀ, that block's top-k per query
  ─► co-partition by query_id: merge each query's k × blocks rows into its global top-k (ranked)
  ─► co-partition by candidate_id with the corpus content (`doc_*` as `candidate_*`)
  ─► co-partition by query_id with the query content (and instruction), each query's rows ordered by rank
  ─► candidates/: pairs (PAIRS_SCHEMA), each query's candidates in one file, sorted by retrieval_rank

Content is joined after the merge rather than carried through it: carrying `doc_*` in the embedding rows
would push every document's content through the merge shuffle k × blocks times per query (about Q·k·B
rows), while joining moves the corpus content once plus the Q·k winning rows. For any corpus where
Q·k·B exceeds the corpus size (the nightly case) the join moves far less data, and the embedding table
stays lean (ids, hashes, vectors).

A query's optional `instruction` (its prompt for the reranker, as for `jobs.rerank --run`) travels with its
content into every one of its candidate pairs; without the column the pairs' `instruction` is null.

A corpus of at most `driver_rows` rows takes none of the above round trips: `retrieve_on_driver` runs the
same block top-k, merge and joins in the driver process and writes one file, sorted by query and rank.

Scores are float64 dot products (of L2-normalised vectors for "cosine") rounded to float32; ties are
broken by doc id ascending, inside a block and in the merge alike, so the result equals a brute-force
top-k over the whole matrix.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from pipelines.inputs.first_stage import queries_schema
from pipelines.refresh.join import co_partition, join_tables, partitions_for
from pipelines.storage import uris
from pipelines.storage.tables import iter_blocks, read_file, read_table, write_file
from schemas import columns as c
from schemas.tables import CORPUS_SCHEMA, PAIRS_SCHEMA, normalize_to

Metric = Literal["cosine", "dot"]
METRICS = ("cosine", "dot")
SCORE_BUDGET_BYTES = 256 << 20  # the float64 score matrix of one query chunk against one block

HITS_SCHEMA = pa.schema(
    [
        pa.field(c.QUERY_ID, pa.string()),
        pa.field(c.CANDIDATE_ID, pa.string()),
        pa.field(c.RETRIEVAL_SCORE, pa.float32()),
    ]
)
MERGED_SCHEMA = pa.schema([*HITS_SCHEMA, pa.field(c.RETRIEVAL_RANK, pa.int32())])
CANDIDATE_CONTENT_SCHEMA = pa.schema(
    [pa.field(n, pa.string()) for n in (c.CANDIDATE_ID, *c.CANDIDATE_CONTENT)]
)
# The query columns joined into the pairs: id, content and the optional instruction (null when absent).
QUERY_CONTENT_SCHEMA = pa.schema([pa.field(f.name, f.type) for f in queries_schema(with_instruction=True)])


# ---------------------------------------------------------------------------- pure functions (no Ray)


def prepare_matrix(matrix: np.ndarray, metric: Metric) -> np.ndarray:
    """float64 copy; rows L2-normalised for cosine (a zero row stays zero and scores 0)."""
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r} is not one of {list(METRICS)}")
    out = np.asarray(matrix, dtype=np.float64)
    if metric == "cosine":
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out = out / np.where(norms == 0, 1.0, norms)
    return out


def topk_positions(scores: np.ndarray, k: int) -> np.ndarray:
    """Per row of `scores` (m × n), the column positions of its k best, ordered by (score desc, position
    asc). Exact with ties: a row whose k-th score is tied beyond k columns is resolved by a full sort."""
    m, n = scores.shape
    if k >= n:
        cand = np.tile(np.arange(n), (m, 1))
    else:
        cand = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        kth = np.take_along_axis(scores, cand, axis=1).min(axis=1)
        tied = np.flatnonzero((scores >= kth[:, None]).sum(axis=1) > k)
        for r in tied:
            cand[r] = np.lexsort((np.arange(n), -scores[r]))[:k]
    values = np.take_along_axis(scores, cand, axis=1)
    order = np.lexsort((cand, -values), axis=1)
    return np.take_along_axis(cand, order, axis=1)


def block_topk(
    queries: np.ndarray, doc_ids: pa.Array, docs: np.ndarray, k: int, metric: Metric
) -> Iterator[tuple[np.ndarray, pa.Array, np.ndarray]]:
    """Top-k of every query within one corpus block: yields (query row indices, doc ids, float32 scores),
    one chunk of queries at a time. `queries` is already `prepare_matrix`-ed (it is shared by all blocks)."""
    order = pc.sort_indices(doc_ids).to_numpy()  # position order == doc id order, for tie-breaking
    ids = doc_ids.take(pa.array(order))
    block = prepare_matrix(np.asarray(docs)[order], metric)
    n = len(order)
    if n == 0:
        return
    kk = min(k, n)
    chunk = max(1, SCORE_BUDGET_BYTES // (8 * n))
    for start in range(0, len(queries), chunk):
        scores = (queries[start : start + chunk] @ block.T).astype(np.float32)
        top = topk_positions(scores, kk)
        rows = np.repeat(np.arange(start, start + len(scores)), kk)
        yield rows, ids.take(pa.array(top.reshape(-1))), np.take_along_axis(scores, top, axis=1).reshape(-1)


def merge_topk(hits: pa.Table, k: int) -> pa.Table:
    """Global top-k per query from per-block hits (all of a query's hits must be in `hits`): order by
    (score desc, doc id asc), keep k, add `retrieval_rank` (1 = best)."""
    order = pc.sort_indices(
        hits,
        sort_keys=[
            (c.QUERY_ID, "ascending"),
            (c.RETRIEVAL_SCORE, "descending"),
            (c.CANDIDATE_ID, "ascending"),
        ],
    )
    hits = hits.take(order)
    n = hits.num_rows
    qids = np.asarray(hits.column(c.QUERY_ID).to_pylist(), dtype=object)
    starts = np.ones(n, dtype=bool)
    starts[1:] = qids[1:] != qids[:-1]
    group_start = (
        np.maximum.accumulate(np.where(starts, np.arange(n), 0)) if n else np.zeros(0, dtype=np.int64)
    )
    rank = np.arange(n) - group_start + 1
    keep = rank <= k
    out = hits.filter(pa.array(keep)).append_column(c.RETRIEVAL_RANK, pa.array(rank[keep].astype(np.int32)))
    return out


# ---------------------------------------------------------------------------------- Ray stages


def load_query_matrix(query_embeddings: str) -> tuple[pa.Array, np.ndarray]:
    """(query ids, float32 matrix) of the embedded queries: small, so it is read on the driver (from the
    Parquet files directly: a Ray Data execution would cost more than the read)."""
    table = read_table(query_embeddings, [c.QUERY_ID, c.EMBEDDING, c.ERROR])
    table = table.filter(pc.is_null(table.column(c.ERROR))).select([c.QUERY_ID, c.EMBEDDING])
    if table.num_rows == 0:
        return pa.array([], pa.string()), np.zeros((0, 0), dtype=np.float32)
    table = table.combine_chunks()
    return table.column(c.QUERY_ID).chunk(0), _matrix(table.column(c.EMBEDDING))


def _matrix(column) -> np.ndarray:
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    dim = array.type.list_size
    return array.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)


def block_hits(table: pa.Table, queries_ref, k: int, metric: Metric) -> Iterator[pa.Table]:
    """map_batches UDF over corpus embedding blocks: that block's top-k for every query."""
    query_ids, queries = ray.get(queries_ref) if isinstance(queries_ref, ray.ObjectRef) else queries_ref
    ok = table.filter(pc.is_null(table.column(c.ERROR)))
    doc_ids = ok.column(c.DOC_ID).combine_chunks()
    for rows, ids, scores in block_topk(queries, doc_ids, _matrix(ok.column(c.EMBEDDING)), k, metric):
        yield pa.Table.from_arrays(
            [query_ids.take(pa.array(rows)), ids, pa.array(scores, pa.float32())], schema=HITS_SCHEMA
        )


def _merge_partition(hits: pa.Table, _right, k: int) -> pa.Table:
    return merge_topk(hits, k)


def _as_candidate_content(table: pa.Table) -> pa.Table:
    corpus = normalize_to(table, pa.schema([pa.field(f.name, f.type) for f in CORPUS_SCHEMA]))
    return corpus.rename_columns(CANDIDATE_CONTENT_SCHEMA.names)


def _query_content(table: pa.Table) -> pa.Table:
    return normalize_to(table, QUERY_CONTENT_SCHEMA)


def _join_inner(rows: pa.Table, content: pa.Table, key: list[str]) -> pa.Table:
    return join_tables(rows, content, key, how="inner")


def _join_and_order(rows: pa.Table, content: pa.Table) -> pa.Table:
    joined = join_tables(rows, content, [c.QUERY_ID], how="inner")
    joined = joined.sort_by([(c.QUERY_ID, "ascending"), (c.RETRIEVAL_RANK, "ascending")])
    return normalize_to(joined, PAIRS_SCHEMA)


def retrieve(
    *,
    corpus_embeddings: str,
    query_embeddings: str,
    corpus_files: list[str],
    query_files: list[str],
    output: str,
    k: int,
    metric: Metric,
    block_rows: int,
    rows_per_partition: int,
    corpus_rows: int,
    driver_rows: int = 0,
) -> int:
    """Write the top-`k` candidates of every embedded query to `output`; returns the number of queries.
    `corpus_rows` (from Parquet metadata) sizes the shuffles: the merge moves about Q·k rows per corpus
    block, the joins Q·k rows plus the corpus or the queries. A corpus of at most `driver_rows` rows is
    retrieved on the driver (`retrieve_on_driver`: the same blocks, merge and joins, no cluster round
    trip), written as one file."""
    query_ids, queries = load_query_matrix(query_embeddings)
    uris.remove(output)
    if len(query_ids) == 0:
        return 0
    prepared = (query_ids, prepare_matrix(queries, metric))
    if corpus_rows <= driver_rows:
        table = retrieve_on_driver(
            prepared, corpus_embeddings, corpus_files, query_files, k, metric, block_rows
        )
        write_file(table, output)
        return len(query_ids)
    queries_ref = ray.put(prepared)
    corpus = ray.data.read_parquet(corpus_embeddings, filesystem=uris.pyarrow_filesystem(corpus_embeddings))
    hits = corpus.select_columns([c.DOC_ID, c.EMBEDDING, c.ERROR]).map_batches(
        block_hits,
        fn_kwargs={"queries_ref": queries_ref, "k": k, "metric": metric},
        batch_size=block_rows,
        batch_format="pyarrow",
    )
    pairs, blocks = len(query_ids) * k, -(-corpus_rows // block_rows)
    merged = co_partition(
        hits,
        None,
        key=[c.QUERY_ID],
        num_partitions=partitions_for(pairs * blocks, rows_per_partition),
        fn=_merge_partition,
        fn_kwargs={"k": k},
    )
    docs = ray.data.read_parquet(corpus_files, filesystem=uris.pyarrow_filesystem(corpus_files[0]))
    docs = docs.map_batches(_as_candidate_content, batch_format="pyarrow")
    with_docs = co_partition(
        merged,
        docs,
        key=[c.CANDIDATE_ID],
        num_partitions=partitions_for(pairs + corpus_rows, rows_per_partition),
        fn=_join_inner,
        left_schema=MERGED_SCHEMA,
        right_schema=CANDIDATE_CONTENT_SCHEMA,
        fn_kwargs={"key": [c.CANDIDATE_ID]},
    )
    query_content = ray.data.read_parquet(query_files, filesystem=uris.pyarrow_filesystem(query_files[0]))
    query_content = query_content.map_batches(_query_content, batch_format="pyarrow")
    candidates = co_partition(
        with_docs,
        query_content,
        key=[c.QUERY_ID],
        num_partitions=partitions_for(pairs + len(query_ids), rows_per_partition),
        fn=_join_and_order,
        left_schema=pa.schema([*MERGED_SCHEMA, *CANDIDATE_CONTENT_SCHEMA.remove(0)]),
        right_schema=QUERY_CONTENT_SCHEMA,
    )
    candidates.write_parquet(output, filesystem=uris.pyarrow_filesystem(output))
    return len(query_ids)


def retrieve_on_driver(
    queries: tuple[pa.Array, np.ndarray],
    corpus_embeddings: str,
    corpus_files: list[str],
    query_files: list[str],
    k: int,
    metric: Metric,
    block_rows: int,
) -> pa.Table:
    """The candidates (PAIRS_SCHEMA, ordered by query then rank) of `queries` = (ids, prepared matrix),
    computed in this process by the cluster path's own functions: per-block top-k over `block_rows` corpus
    rows at a time, the merge, the content joins."""
    columns = [c.DOC_ID, c.EMBEDDING, c.ERROR]
    hits = [
        t
        for block in iter_blocks(uris.list_parquet(corpus_embeddings), columns, block_rows)
        for t in block_hits(block, queries, k, metric)
    ]
    merged = merge_topk(pa.concat_tables(hits) if hits else HITS_SCHEMA.empty_table(), k)
    wanted = pc.unique(merged.column(c.CANDIDATE_ID))
    docs = [_as_candidate_content(read_file(f, CORPUS_SCHEMA.names)) for f in corpus_files]
    docs = pa.concat_tables([d.filter(pc.is_in(d.column(c.CANDIDATE_ID), wanted)) for d in docs])
    with_docs = _join_inner(merged, docs, [c.CANDIDATE_ID])
    query_content = pa.concat_tables(
        [_query_content(read_file(f, QUERY_CONTENT_SCHEMA.names)) for f in query_files]
    )
    return _join_and_order(with_docs, query_content)
