"""A first-stage run as input, through the whole job on the session's Ray: a TREC run joined with a corpus
and queries (or a BEIR directory) ranks exactly as the same pairs given directly, scores equal to
`CrossEncoder.predict`; the depth is taken before the join, and a missing document or query is one error
row naming it. Small inputs are joined in the driver, larger ones on Ray Data: both paths are run."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sentence_transformers import CrossEncoder

from actors.reranker.spec import RerankerSpec
from pipelines.inputs import first_stage
from pipelines.rerank.config import RerankConfig
from pipelines.rerank.run import run_rerank
from pipelines.storage.tables import read_table

DOCS = {f"d{k}": text for k, text in enumerate(["ray actors", "data blocks", "models score", "pairs rank"])}
QUERIES = {"q1": "what are actors", "q2": "how are blocks read"}
# q1's rows: d2 listed twice (its best rank kept), d9 is not in the corpus; q3 is not in the queries.
TREC = """q1 Q0 d2 1 9.5 bm25
q1 Q0 d9 2 8.0 bm25
q1 Q0 d0 3 7.25 bm25
q1 Q0 d2 4 1.0 bm25
q1 Q0 d3 5 0.5 bm25
q2 Q0 d1 1 3.0 bm25
q2 Q0 d3 2 2.5 bm25
q3 Q0 d0 1 2.0 bm25
"""


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def expected_pairs(depth: int) -> list[dict]:
    """The pairs a user would have joined by hand: each query's `depth` best rows, present ones only."""
    rows = [
        ("q1", "d2", 9.5, 1),
        ("q1", "d0", 7.25, 3),
        ("q2", "d1", 3.0, 1),
        ("q2", "d3", 2.5, 2),
    ]
    if depth >= 4:
        rows.insert(2, ("q1", "d3", 0.5, 5))
    return [
        {
            "query_id": q,
            "candidate_id": d,
            "query_text": QUERIES[q],
            "candidate_text": DOCS[d],
            "retrieval_score": score,
            "retrieval_rank": rank,
        }
        for q, d, score, rank in rows
    ]


@pytest.fixture()
def inputs(tmp_path):
    (tmp_path / "bm25.trec").write_text(TREC)
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"doc_id": k, "doc_text": v} for k, v in DOCS.items()])
    queries = write_jsonl(
        tmp_path / "queries.jsonl", [{"query_id": k, "query_text": v} for k, v in QUERIES.items()]
    )
    return {"run": str(tmp_path / "bm25.trec"), "corpus": corpus, "queries": queries}


@pytest.fixture(scope="module")
def direct(ray_session, tmp_path_factory, qwen3_causal):
    """The pairs a run at depth 3 or 5 joins to, given directly to the job: the reference each join is held
    to (one run per depth for the module)."""
    root = tmp_path_factory.mktemp("direct")
    spec = RerankerSpec(model=str(qwen3_causal), max_length=64)

    def at_depth(depth: int):
        if not (root / f"depth{depth}").exists():
            pq.write_table(pa.Table.from_pylist(expected_pairs(depth)), root / f"depth{depth}.parquet")
            run_rerank(
                RerankConfig(
                    pairs=str(root / f"depth{depth}.parquet"),
                    output=str(root / f"depth{depth}"),
                    reranker=spec,
                )
            )
        return root / f"depth{depth}"

    return at_depth


def assert_same_as_direct_pairs(out, direct_out, model_dir):
    ranked = read_table(str(out / "ranked")).to_pylist()
    direct = read_table(str(direct_out / "ranked")).to_pylist()
    key = lambda r: (r["query_id"], r["rank"])  # noqa: E731
    assert [
        (r["query_id"], r["candidate_id"], r["rank"], r["retrieval_rank"]) for r in sorted(ranked, key=key)
    ] == [(r["query_id"], r["candidate_id"], r["rank"], r["retrieval_rank"]) for r in sorted(direct, key=key)]
    np.testing.assert_allclose(
        [r["score"] for r in sorted(ranked, key=key)],
        [r["score"] for r in sorted(direct, key=key)],
        atol=1e-6,
    )
    want = CrossEncoder(str(model_dir), max_length=64).predict(
        [(QUERIES[r["query_id"]], DOCS[r["candidate_id"]]) for r in ranked]
    )
    np.testing.assert_allclose([r["score"] for r in ranked], want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("join", ["driver", "ray-data"])
def test_a_trec_run_ranks_like_the_same_pairs_given_directly(
    ray_session, tmp_path, qwen3_causal, inputs, join, monkeypatch, direct
):
    if join == "ray-data":
        monkeypatch.setattr(first_stage, "DRIVER_BYTES", 0)
    spec = RerankerSpec(model=str(qwen3_causal), max_length=64)
    cfg = RerankConfig(**inputs, depth=3, output=str(tmp_path / "out"), reranker=spec, max_error_rate=0.5)
    manifest = run_rerank(cfg)
    assert_same_as_direct_pairs(tmp_path / "out", direct(3), qwen3_causal)
    errors = sorted(read_table(str(tmp_path / "out" / "errors")).to_pylist(), key=lambda r: r["query_id"])
    assert [(e["query_id"], e["candidate_id"], e["stage"], e["error"]) for e in errors] == [
        ("q1", "d9", "join", "document 'd9' is not in the corpus"),
        ("q3", "d0", "join", "query 'q3' is not in the queries"),
    ]
    counts = manifest["counts"]
    assert (counts["pairs_in"], counts["scored"], counts["failed"]) == (6, 4, 2)
    assert sorted(manifest["input_files"]) == sorted(inputs.values())


def test_a_beir_directory_and_a_run_resumed_under_its_run_id(ray_session, tmp_path, qwen3_causal, direct):
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    write_jsonl(beir / "corpus.jsonl", [{"_id": k, "title": "", "text": v} for k, v in DOCS.items()])
    write_jsonl(beir / "queries.jsonl", [{"_id": k, "text": v} for k, v in QUERIES.items()])
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td0\t1\nq2\td1\t1\n")
    (tmp_path / "bm25.trec").write_text(TREC)
    spec = RerankerSpec(model=str(qwen3_causal), max_length=64)
    cfg = RerankConfig(
        run=str(tmp_path / "bm25.trec"),
        beir=str(beir),
        depth=5,
        output=str(tmp_path / "out"),
        reranker=spec,
        run_id="bm25-beir",
        max_error_rate=0.5,
    )
    manifest = run_rerank(cfg)
    assert_same_as_direct_pairs(tmp_path / "out", direct(5), qwen3_causal)
    assert manifest["counts"]["scored"] == 5 and manifest["counts"]["failed"] == 2
    again = run_rerank(cfg)  # the same command again: the complete run, not a second one
    assert again["run_id"] == "bm25-beir" and again["counts"] == manifest["counts"]
