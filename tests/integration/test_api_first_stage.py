"""`pipelines.api.pairs_from_run` on the shared local Ray: a TREC run joined with a corpus and queries in
Python ranks as `jobs.rerank --run` ranks the same files, scores equal to `CrossEncoder.predict` (under a
query's own instruction where it has one); a missing document or query is one error row naming it. The
join on Ray Data (under `staging`) gives the pairs the driver's join gives; bad arguments fail at once."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sentence_transformers import CrossEncoder

from actors.reranker.spec import RerankerSpec
from pipelines.api import pairs_from_run, rerank_dataset
from pipelines.inputs import first_stage
from pipelines.rerank.config import RerankConfig
from pipelines.rerank.run import run_rerank
from pipelines.storage.tables import read_table
from schemas.settings import SettingError
from schemas.tables import InputError

DOCS = {f"d{k}": text for k, text in enumerate(["ray actors", "data blocks", "models score", "pairs rank"])}
QUERIES = {"q1": "what are actors", "q2": "how are blocks read"}
INSTRUCTIONS = {"q2": "Judge whether the passage explains reading."}
# q1: d2 listed twice (its best rank kept), d9 not in the corpus; q3 not in the queries; depth 3.
TREC = """q1 Q0 d2 1 9.5 bm25
q1 Q0 d9 2 8.0 bm25
q1 Q0 d0 3 7.25 bm25
q1 Q0 d2 4 1.0 bm25
q1 Q0 d3 5 0.5 bm25
q2 Q0 d1 1 3.0 bm25
q2 Q0 d3 2 2.5 bm25
q3 Q0 d0 1 2.0 bm25
"""
JOIN_ERRORS = [
    ("q1", "d9", "join", "document 'd9' is not in the corpus"),
    ("q3", "d0", "join", "query 'q3' is not in the queries"),
]


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture()
def inputs(tmp_path) -> dict[str, str]:
    (tmp_path / "bm25.trec").write_text(TREC)
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"doc_id": k, "doc_text": v} for k, v in DOCS.items()])
    queries = [
        {"query_id": k, "query_text": v, "instruction": INSTRUCTIONS.get(k)} for k, v in QUERIES.items()
    ]
    return {
        "run": str(tmp_path / "bm25.trec"),
        "corpus": corpus,
        "queries": write_jsonl(tmp_path / "queries.jsonl", queries),
    }


def rows_of(table_rows, *columns) -> list[tuple]:
    return sorted(tuple(r[c] for c in columns) for r in table_rows)


def test_a_trec_run_through_the_api_ranks_as_the_job_does(ray_session, tmp_path, qwen3_causal, inputs):
    spec = RerankerSpec(model=str(qwen3_causal), max_length=64)
    pairs = pairs_from_run(**inputs, depth=3)
    result = rerank_dataset(pairs, spec, materialize_scores=True, num_partitions=1)  # a few rows: one reduce
    ranked, errors = result.ranked.take_all(), result.errors.take_all()

    run_rerank(
        RerankConfig(**inputs, depth=3, output=str(tmp_path / "job"), reranker=spec, max_error_rate=0.5)
    )
    job = read_table(str(tmp_path / "job" / "ranked")).to_pylist()
    columns = ("query_id", "rank", "candidate_id", "retrieval_rank", "retrieval_score")
    assert rows_of(ranked, *columns) == rows_of(job, *columns)
    by_pair = {(r["query_id"], r["candidate_id"]): r["score"] for r in ranked}
    job_scores = {(r["query_id"], r["candidate_id"]): r["score"] for r in job}
    pairs_in_order = sorted(by_pair)
    np.testing.assert_allclose(
        [by_pair[p] for p in pairs_in_order], [job_scores[p] for p in pairs_in_order], atol=1e-6, rtol=0
    )

    # Scores equal predict, under q2's own instruction and q1's default prompt.
    model = CrossEncoder(str(qwen3_causal), max_length=64)
    for q in QUERIES:
        mine = [p for p in pairs_in_order if p[0] == q]
        want = model.predict([(QUERIES[q], DOCS[d]) for _, d in mine], prompt=INSTRUCTIONS.get(q))
        np.testing.assert_allclose([by_pair[p] for p in mine], want, atol=1e-5, rtol=0)

    assert rows_of(errors, "query_id", "candidate_id", "stage", "error") == JOIN_ERRORS
    assert len(ranked) + len(errors) == 6  # q1: d2, d9, d0 (depth 3); q2: d1, d3; q3: d0


def test_the_join_on_ray_data_under_staging_gives_the_drivers_pairs(
    ray_session, tmp_path, inputs, monkeypatch
):
    driver = pairs_from_run(**inputs, depth=3).take_all()
    assert rows_of(driver, "query_id", "candidate_id", "retrieval_rank", "instruction", "__input_error") == [
        ("q1", "d0", 3, None, None),
        ("q1", "d2", 1, None, None),
        ("q1", "d9", 2, None, "document 'd9' is not in the corpus"),
        ("q2", "d1", 1, INSTRUCTIONS["q2"], None),
        ("q2", "d3", 2, INSTRUCTIONS["q2"], None),
        ("q3", "d0", 1, None, "query 'q3' is not in the queries"),
    ]
    monkeypatch.setattr(first_stage, "DRIVER_BYTES", 0)  # every input is "large" now
    with pytest.raises(InputError, match="pass staging="):
        pairs_from_run(**inputs, depth=3)
    staged = pairs_from_run(**inputs, depth=3, staging=str(tmp_path / "staged")).take_all()
    key = lambda r: (r["query_id"], r["candidate_id"])  # noqa: E731
    assert sorted(staged, key=key) == sorted(driver, key=key)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"depth": 0}, "depth: must be >= 1, got 0"),
        ({"format": "xml"}, "format: 'xml' is not one of"),
        ({"beir": "/data/beir"}, "corpus: not with beir"),
        ({"queries": None}, "queries: required with a run"),
        ({"columns": {"doc_text": "body"}}, "no column 'body'"),
    ],
)
def test_bad_arguments_fail_before_any_cluster_work(inputs, kwargs, message):
    with pytest.raises((SettingError, InputError), match=message):
        pairs_from_run(**(inputs | kwargs))
