"""First-stage runs joined into pairs on the driver: TREC parsing, the depth taken before the join, a pair
listed twice, and missing documents and queries as named error rows."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.inputs.first_stage import (
    INPUT_ERROR,
    best_per_query,
    join_run,
    open_first_stage,
    stage_run_pairs,
)
from pipelines.inputs.runs import open_run, parse_trec, read_run, run_rows
from schemas.tables import InputError

TREC = """q1 Q0 d3 1 9.5 bm25
q1 Q0 d1 2 7.25 bm25
q1 Q0 d9 3 7.0 bm25
q1 Q0 d2 4 6.5 bm25
q1 Q0 d1 5 1.0 bm25
q2 Q0 d2 1 3.0 bm25
q3 Q0 d1 1 2.0 bm25
"""
CORPUS = pa.table({"doc_id": ["d1", "d2", "d3"], "doc_text": ["one", "two", "three"]})
QUERIES = pa.table({"query_id": ["q1", "q2"], "query_text": ["first", "second"]})


def test_trec_lines_parse_and_a_malformed_line_is_named():
    run = parse_trec(TREC, "bm25.trec")
    assert run.num_rows == 7
    assert run.slice(0, 1).to_pylist() == [
        {"query_id": "q1", "doc_id": "d3", "retrieval_score": 9.5, "retrieval_rank": 1}
    ]
    with pytest.raises(InputError, match=r"bm25\.trec:2: a TREC run line has 6 fields"):
        parse_trec("q1 Q0 d1 1 2.0 t\nq1 d2 2 1.0 t\n", "bm25.trec")


def test_the_depth_is_taken_before_the_join_and_a_repeated_pair_keeps_its_best_rank():
    best = best_per_query(parse_trec(TREC, "r"), depth=3)
    assert [(r["query_id"], r["doc_id"], r["retrieval_rank"]) for r in best.to_pylist()] == [
        ("q1", "d3", 1),
        ("q1", "d1", 2),
        ("q1", "d9", 3),
        ("q2", "d2", 1),
        ("q3", "d1", 1),
    ]


def test_missing_documents_and_queries_become_rows_that_name_them():
    pairs = join_run(parse_trec(TREC, "r"), CORPUS, QUERIES, depth=3).to_pylist()
    assert [(p["query_id"], p["candidate_id"], p["retrieval_rank"]) for p in pairs] == [
        ("q1", "d3", 1),
        ("q1", "d1", 2),
        ("q1", "d9", 3),
        ("q2", "d2", 1),
        ("q3", "d1", 1),
    ]
    assert [p[INPUT_ERROR] for p in pairs] == [
        None,
        None,
        "document 'd9' is not in the corpus",
        None,
        "query 'q3' is not in the queries",
    ]
    assert pairs[0]["query_text"] == "first" and pairs[0]["candidate_text"] == "three"
    assert pairs[1]["retrieval_score"] == 7.25


def test_parquet_and_json_lines_runs_with_candidate_id_and_no_rank(tmp_path):
    rows = pa.table(
        {"query_id": ["q1", "q1", "q2"], "candidate_id": ["a", "b", "c"], "score": [0.1, 0.9, 0.5]}
    )
    pq.write_table(rows, tmp_path / "run.parquet")
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "run.jsonl").write_text("\n".join(json.dumps(r) for r in rows.to_pylist()) + "\n")
    for where in (tmp_path / "run.parquet", tmp_path / "j"):
        run = read_run(open_run(str(where)))
        assert run.column("retrieval_rank").to_pylist() == [2, 1, 1]
        assert run.column("doc_id").to_pylist() == ["a", "b", "c"]
    with pytest.raises(InputError, match=r"needs query_id and doc_id \(or candidate_id\)"):
        run_rows(pa.table({"query_id": ["q"], "document": ["d"], "score": [1.0]}), "x")


def first_stage_cfg(tmp_path, **overrides) -> SimpleNamespace:
    """The first-stage settings of a RerankConfig, as `open_first_stage` reads them."""
    settings = dict(
        run=str(tmp_path / "bm25.trec"),
        corpus=str(tmp_path / "corpus.jsonl"),
        queries=str(tmp_path / "queries.parquet"),
        beir=None,
        split="test",
        depth=2,
        format="auto",
        columns=None,
    )
    return SimpleNamespace(**(settings | overrides))


def test_staged_pairs_are_reused_while_the_inputs_are_unchanged(tmp_path):
    (tmp_path / "bm25.trec").write_text(TREC)
    (tmp_path / "corpus.jsonl").write_text("\n".join(json.dumps(r) for r in CORPUS.to_pylist()) + "\n")
    pq.write_table(
        QUERIES.append_column("instruction", pa.array(["find it", None])), tmp_path / "queries.parquet"
    )
    first = open_first_stage(first_stage_cfg(tmp_path))
    assert first.with_instruction and not first.media
    staged = str(tmp_path / "out" / "_input")
    files = stage_run_pairs(first, staged)
    pairs = pq.read_table(files)
    assert pairs.num_rows == 2 + 1 + 1  # q1's two best (d3, d1), q2's one, q3's one (missing query)
    assert pairs.column("instruction").to_pylist() == ["find it", "find it", None, None]
    record = tmp_path / "out" / "_input" / "_source.json"
    mtime = record.stat().st_mtime_ns
    assert stage_run_pairs(first, staged) == files and record.stat().st_mtime_ns == mtime
    with pytest.raises(InputError, match="no run files found"):
        open_first_stage(first_stage_cfg(tmp_path, run=str(tmp_path / "nothing")))
    with pytest.raises(InputError, match=r"queries\.parquet.*query_id"):
        pq.write_table(pa.table({"qid": ["q1"], "query_text": ["x"]}), tmp_path / "queries.parquet")
        open_first_stage(first_stage_cfg(tmp_path))
