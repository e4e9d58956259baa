"""The Python API on the shared local Ray: a Dataset of Python rows reranked as one step of a Ray Data
pipeline equals CrossEncoder.predict; the API and the CLI, and the CLI on Parquet, JSON Lines and CSV, give
the same ranked table to the byte; kept columns arrive intact."""

from __future__ import annotations

import csv
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
from ray.data.expressions import col
from sentence_transformers import CrossEncoder

from actors.reranker.spec import RerankerSpec
from pipelines.api import rerank_dataset, rerank_pairs
from tests.pairs_data import WORDS

# Ids that only survive as strings ("007" read as a number is 7), a tenant per query and an integer per
# pair to carry through, and one pair without candidate content (an error row, not a lost one).
QUERIES = {
    "007": ("which actor holds the model", "a"),
    "010": ("how blocks stream", "b"),
    "123": ("score", "a"),
}


def pairs() -> list[dict]:
    rows = []
    for q, (text, tenant) in QUERIES.items():
        for k in range(4):
            words = " ".join(WORDS[(int(q) + k + j) % len(WORDS)] for j in range(2 + 3 * k))
            rows.append(
                {
                    "query_id": q,
                    "candidate_id": f"00{k}{q[-1]}",
                    "query_text": text,
                    "candidate_text": words,
                    "tenant": tenant,
                    "n": int(q) * 10 + k,
                }
            )
    rows.append({**rows[0], "candidate_id": "0999", "candidate_text": None, "n": -1})
    return rows


def spec(model) -> RerankerSpec:
    return RerankerSpec(model=str(model), max_length=64)


def predicted(model, rows: list[dict]) -> dict[tuple[str, str], float]:
    scores = CrossEncoder(str(model), max_length=64).predict(
        [(r["query_text"], r["candidate_text"]) for r in rows]
    )
    return {(r["query_id"], r["candidate_id"]): float(s) for r, s in zip(rows, scores, strict=True)}


@pytest.fixture(scope="module")
def api(ray_session, qwen3_causal):
    """The API over a Dataset of Python rows, scored once (materialized) and shared by the tests below.
    Ray Data's block order is kept while it scores: a pair's score can differ in its last bits when it
    shares a micro-batch with other pairs, and Ray Data does not otherwise fix the order in which blocks
    reach an actor; byte-equality with the CLI is asked of the same batches (the CLI runs below keep it
    too)."""
    ctx = ray.data.DataContext.get_current()
    before = ctx.execution_options.preserve_order
    ctx.execution_options.preserve_order = True
    try:
        result = rerank_dataset(
            ray.data.from_items(pairs()),
            spec(qwen3_causal),
            keep_columns=["tenant", "n"],
            materialize_scores=True,
        )
        yield result, pa.concat_tables(ray.get(result.ranked.to_arrow_refs()))
    finally:
        ctx.execution_options.preserve_order = before


def test_a_dataset_step_scores_as_predict_and_ranks_per_query(api, qwen3_causal):
    result, _ = api
    rows = pairs()
    tenant_a = result.ranked.filter(expr=col("tenant") == "a").take_all()  # and keep going with Ray Data

    good = [r for r in rows if r["candidate_text"] is not None]
    want = predicted(qwen3_causal, good)
    assert {r["query_id"] for r in tenant_a} == {"007", "123"}
    assert len(tenant_a) == sum(1 for r in good if r["tenant"] == "a")
    for r in tenant_a:
        assert abs(r["score"] - want[(r["query_id"], r["candidate_id"])]) <= 1e-5
    by_input = {(r["query_id"], r["candidate_id"]): r for r in rows}
    for q in ("007", "123"):
        ranked = sorted((r for r in tenant_a if r["query_id"] == q), key=lambda r: r["rank"])
        assert [r["rank"] for r in ranked] == [1, 2, 3, 4]
        assert ranked == sorted(ranked, key=lambda r: (-r["score"], r["candidate_id"]))
        assert all(r["n"] == by_input[(q, r["candidate_id"])]["n"] for r in ranked)
    assert not any(k.startswith("__") for r in tenant_a for k in r)
    assert result.errors.take_all() == [
        {
            "query_id": "007",
            "candidate_id": "0999",
            "stage": "validate",
            "error": "candidate has no content: candidate_text/_image/_audio/_video all null",
        }
    ]

    small = rerank_pairs(good[:4], spec(qwen3_causal), top_k=2)  # the in-memory helper: query 007 alone
    top = sorted((r for r in tenant_a if r["query_id"] == "007"), key=lambda r: r["rank"])[:2]
    assert [(r["candidate_id"], r["rank"]) for r in small.ranked] == [
        (r["candidate_id"], r["rank"]) for r in top
    ]
    for r in small.ranked:
        assert abs(r["score"] - want[("007", r["candidate_id"])]) <= 1e-5
    assert small.errors == []


def canonical(table: pa.Table) -> bytes:
    """ "Byte-equal" here: the Arrow IPC stream of the whole ranked table, rows in (query_id, rank) order
    (file and block boundaries are not part of the contract) and schema metadata dropped (Parquet adds its
    own). Equal bytes mean equal column names, types, nullability and bit-identical values, float32 scores
    included."""
    table = table.sort_by([("query_id", "ascending"), ("rank", "ascending")]).combine_chunks()
    table = table.replace_schema_metadata(None)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def test_cli_and_api_give_byte_equal_ranked_tables_for_parquet_jsonl_and_csv(
    api, tmp_path, qwen3_causal, capsys
):
    from jobs import rerank

    _, api_table = api
    rows = pairs()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pairs.parquet")
    renamed = [
        {**{k: v for k, v in r.items() if k != "query_text"}, "question": r["query_text"]} for r in rows
    ]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in renamed))
    with open(tmp_path / "pairs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    runs = {
        "parquet": ["--pairs", str(tmp_path / "pairs.parquet")],
        "jsonl": ["--pairs", str(tmp_path / "pairs.jsonl"), "--column", "query_text=question"],
        "csv": ["--pairs", str(tmp_path / "pairs.csv")],
    }
    ctx = ray.data.DataContext.get_current()
    before = ctx.execution_options.preserve_order
    ctx.execution_options.preserve_order = True  # the same batches as the API's (see the `api` fixture)
    try:
        tables = {
            name: _cli_run(rerank, args, tmp_path / f"out-{name}", qwen3_causal, capsys)
            for name, args in runs.items()
        }
    finally:
        ctx.execution_options.preserve_order = before

    names = ["query_id", "candidate_id", "score", "rank", "retrieval_score", "retrieval_rank", "tenant", "n"]
    assert api_table.column_names == names
    assert (
        api_table.schema.field("n").type == pa.int64()
        and api_table.schema.field("query_id").type == pa.string()
    )
    for name, table in tables.items():
        assert canonical(table) == canonical(api_table), name
    good = [r for r in rows if r["candidate_text"] is not None]
    got = {(r["query_id"], r["candidate_id"]): r for r in api_table.to_pylist()}
    assert sorted(got) == sorted((r["query_id"], r["candidate_id"]) for r in good)
    for r in good:  # kept columns arrive intact ("007" still a string, n still an int)
        kept = got[(r["query_id"], r["candidate_id"])]
        assert (kept["tenant"], kept["n"]) == (r["tenant"], r["n"])
    want = predicted(qwen3_causal, good)
    np.testing.assert_allclose([got[k]["score"] for k in want], list(want.values()), atol=1e-5, rtol=0)


def _cli_run(rerank, args: list[str], out, model, capsys) -> pa.Table:
    argv = [
        *args,
        "--model",
        str(model),
        "--max-length",
        "64",
        "--output",
        str(out),
        "--keep-columns",
        "tenant,n",
    ]
    code = rerank.main([*argv, "--max-error-rate", "1", "--progress-interval", "0"])
    assert code == 0, capsys.readouterr().err[-2000:]
    assert pq.read_table(out / "errors").column("candidate_id").to_pylist() == ["0999"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["trust_remote_code"] is False
    assert manifest["config"]["reranker"]["trust_remote_code"] is False
    assert not (out / "_input").exists()  # the Parquet copy of JSON Lines / CSV pairs is removed
    return pq.read_table(out / "ranked")
