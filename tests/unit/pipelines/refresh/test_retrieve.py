"""Exact top-k without Ray: per-block top-k + merge equals a brute-force top-k over the whole matrix."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipelines.refresh.retrieve import (
    block_topk,
    merge_topk,
    prepare_matrix,
    retrieve_on_driver,
    topk_positions,
)
from schemas import columns as c
from schemas.tables import PAIRS_SCHEMA


def brute_force(queries, docs, doc_ids, k, metric):
    scores = (prepare_matrix(queries, metric) @ prepare_matrix(docs, metric).T).astype(np.float32)
    out = []
    for row in scores:
        order = sorted(range(len(doc_ids)), key=lambda j: (-row[j], doc_ids[j]))[:k]
        out.append([(doc_ids[j], float(row[j])) for j in order])
    return out


def blocked(queries, docs, doc_ids, k, metric, block):
    prepared = prepare_matrix(queries, metric)
    query_ids = pa.array([f"q{i:03d}" for i in range(len(queries))])
    tables = []
    for start in range(0, len(docs), block):
        ids = pa.array(doc_ids[start : start + block])
        for rows, hit_ids, scores in block_topk(prepared, ids, docs[start : start + block], k, metric):
            tables.append(
                pa.table(
                    {
                        c.QUERY_ID: query_ids.take(pa.array(rows)),
                        c.CANDIDATE_ID: hit_ids,
                        c.RETRIEVAL_SCORE: pa.array(scores, pa.float32()),
                    }
                )
            )
    # The merge sees the hits in an arbitrary order, as after a shuffle.
    hits = pa.concat_tables(tables)
    hits = hits.take(pa.array(np.random.default_rng(0).permutation(hits.num_rows)))
    merged = merge_topk(hits, k).to_pylist()
    out = [[] for _ in range(len(queries))]
    for r in merged:
        out[int(r[c.QUERY_ID][1:])].append((r[c.CANDIDATE_ID], r[c.RETRIEVAL_SCORE], r[c.RETRIEVAL_RANK]))
    return out


def corpus(n_docs=230, n_queries=17, dim=12, seed=0):
    rng = np.random.default_rng(seed)
    docs = rng.normal(size=(n_docs, dim)).astype(np.float32)
    docs[10] = docs[3]  # exact duplicates: ties broken by doc id
    docs[200] = docs[3]
    docs[50] = 0.0  # a zero vector scores 0 under cosine
    queries = rng.normal(size=(n_queries, dim)).astype(np.float32)
    queries[5] = docs[3]
    # ids not in matrix order, of different lengths, so id order is not position order
    doc_ids = [f"d{(i * 7919) % 1000}-{'x' * (i % 3)}" for i in range(n_docs)]
    return queries, docs, doc_ids


@pytest.mark.parametrize("metric", ["cosine", "dot"])
@pytest.mark.parametrize(("k", "block"), [(10, 7), (10, 64), (1, 13), (25, 300), (40, 9)])
def test_blocked_topk_equals_brute_force(metric, k, block):
    queries, docs, doc_ids = corpus()
    want = brute_force(queries, docs, doc_ids, k, metric)
    got = blocked(queries, docs, doc_ids, k, metric, block)
    for q, (w, g) in enumerate(zip(want, got, strict=True)):
        assert [d for d, _ in w] == [d for d, _, _ in g], f"query {q}"
        np.testing.assert_allclose([s for _, s in w], [s for _, s, _ in g], atol=1e-5, rtol=0)
        assert [r for _, _, r in g] == list(range(1, len(w) + 1))


def test_ties_across_blocks_pick_smallest_ids():
    docs = np.ones((9, 3), dtype=np.float32)  # every document ties
    doc_ids = [f"d{i}" for i in (5, 3, 8, 1, 0, 7, 2, 6, 4)]
    got = blocked(np.ones((2, 3), dtype=np.float32), docs, doc_ids, 4, "dot", block=2)
    assert [d for d, _, _ in got[0]] == ["d0", "d1", "d2", "d3"]


def test_topk_positions_resolves_ties_at_the_boundary():
    scores = np.array([[1.0, 3.0, 2.0, 2.0, 2.0, 0.5]], dtype=np.float32)
    assert topk_positions(scores, 3).tolist() == [[1, 2, 3]]
    assert topk_positions(scores, 10).tolist() == [[1, 2, 3, 4, 0, 5]]


def test_merge_keeps_k_per_query_and_ranks_from_one():
    hits = pa.table(
        {
            c.QUERY_ID: ["b", "a", "b", "a", "b"],
            c.CANDIDATE_ID: ["x", "y", "z", "x", "y"],
            c.RETRIEVAL_SCORE: pa.array([0.1, 0.2, 0.3, 0.2, 0.3], pa.float32()),
        }
    )
    out = merge_topk(hits, 2).to_pylist()
    assert [(r[c.QUERY_ID], r[c.CANDIDATE_ID], r[c.RETRIEVAL_RANK]) for r in out] == [
        ("a", "x", 1),
        ("a", "y", 2),
        ("b", "y", 1),
        ("b", "z", 2),
    ]


def write_embeddings(
    path, ids: list[str], vectors: np.ndarray, errors: list[str | None], shards: int
) -> None:
    path.mkdir(parents=True)
    dim = vectors.shape[1]
    valid = pa.array([e is None for e in errors])
    flat = pa.array(vectors.reshape(-1), pa.float32())
    embedding = pa.FixedSizeListArray.from_arrays(flat, dim, mask=pc.invert(valid))
    table = pa.table({c.DOC_ID: ids, c.EMBEDDING: embedding, c.ERROR: pa.array(errors, pa.string())})
    for i in range(shards):
        pq.write_table(table.take(pa.array(range(i, table.num_rows, shards))), path / f"part-{i}.parquet")


@pytest.mark.parametrize("metric", ["cosine", "dot"])
def test_retrieval_on_the_driver_equals_brute_force_with_content_joined(tmp_path, metric):
    """The driver path (for small corpora): the cluster path's blocks, merge and joins in one process."""
    queries, docs, doc_ids = corpus(n_queries=7, dim=6)
    errors = [None] * len(doc_ids)
    errors[7] = "doc has no content"  # an error row never becomes a candidate
    write_embeddings(tmp_path / "emb", doc_ids, docs, errors, shards=3)
    corpus_file = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({c.DOC_ID: doc_ids, "doc_text": [f"text of {d}" for d in doc_ids]}), corpus_file)
    query_ids = pa.array([f"q{i:03d}" for i in range(len(queries))])
    query_file = tmp_path / "queries.parquet"
    pq.write_table(
        pa.table({c.QUERY_ID: query_ids, "query_text": [f"ask {i}" for i in range(7)]}), query_file
    )

    k = 8
    prepared = (query_ids, prepare_matrix(queries, metric))
    got = retrieve_on_driver(
        prepared, str(tmp_path / "emb"), [str(corpus_file)], [str(query_file)], k, metric, 7
    )
    keep = [i for i, e in enumerate(errors) if e is None]
    want = brute_force(queries, docs[keep], [doc_ids[i] for i in keep], k, metric)
    assert got.schema == PAIRS_SCHEMA
    rows = got.to_pylist()
    assert [r[c.QUERY_ID] for r in rows] == sorted(r[c.QUERY_ID] for r in rows), "clustered by query"
    for q, w in enumerate(want):
        mine = [r for r in rows if r[c.QUERY_ID] == f"q{q:03d}"]
        assert [r[c.CANDIDATE_ID] for r in mine] == [d for d, _ in w]
        assert [r[c.RETRIEVAL_RANK] for r in mine] == list(range(1, k + 1))
        np.testing.assert_allclose([r[c.RETRIEVAL_SCORE] for r in mine], [s for _, s in w], atol=1e-6, rtol=0)
        assert all(r["candidate_text"] == f"text of {r[c.CANDIDATE_ID]}" for r in mine)
        assert all(r["query_text"] == f"ask {q}" for r in mine)
