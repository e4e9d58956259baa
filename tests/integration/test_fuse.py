"""Fused scores through the real rerank job, run once on the session's Ray: `fused_score` equals the linear
formula recomputed from the ranked rows' own score and retrieval_score, `rank` and run.trec follow it, and
the scores still equal `CrossEncoder.predict`'s. The fusion checks fail with exit 2 before Ray is used."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jobs import rerank as job
from pipelines.storage import uris
from tests.integration.test_long_runs import assert_complete_and_equal_to_predict
from tests.pairs_data import WORDS

WEIGHT = 0.5


def fusion_pairs() -> pa.Table:
    """3 queries of 4 candidates, the retriever's scores running against their position; q2's retrieval
    scores are all equal (they normalise to 0)."""
    rows = []
    for q in range(3):
        for k in range(4):
            rows.append(
                {
                    "query_id": f"q{q}",
                    "candidate_id": f"d{k}",
                    "query_text": f"{WORDS[q]} {WORDS[q + 3]}",
                    "candidate_text": " ".join(WORDS[(q * 5 + k * 3 + j) % len(WORDS)] for j in range(2 + k)),
                    "retrieval_score": 1.0 if q == 2 else float(10 - 3 * k + q),
                    "retrieval_rank": k + 1,
                }
            )
    table = pa.Table.from_pylist(rows)
    return table.set_column(4, "retrieval_score", table.column("retrieval_score").cast(pa.float32()))


def minmax(values: np.ndarray) -> np.ndarray:
    span = values.max() - values.min()
    return (values - values.min()) / span if span > 0 else np.zeros(len(values))


def test_the_job_ranks_by_the_fused_score(ray_session, tmp_path, qwen3_causal):
    table = fusion_pairs()
    pq.write_table(table, tmp_path / "pairs.parquet")
    out = tmp_path / "out"
    argv = ["--pairs", str(tmp_path / "pairs.parquet"), "--model", str(qwen3_causal), "--output", str(out)]
    argv += ["--max-length", "64", "--run-id", "fused", "--trec-run", "--fuse", "linear"]
    assert job.main([*argv, "--fuse-weight", str(WEIGHT)]) == 0

    ranked = pq.read_table(out / "ranked")
    assert ranked.schema.field("fused_score").type == pa.float32()
    assert ranked.column_names[:5] == ["query_id", "candidate_id", "score", "fused_score", "rank"]
    reordered = 0
    for qid in ("q0", "q1", "q2"):
        rows = sorted((r for r in ranked.to_pylist() if r["query_id"] == qid), key=lambda r: r["rank"])
        score = np.array([r["score"] for r in rows], np.float64)
        retrieval = np.array([r["retrieval_score"] for r in rows], np.float64)
        want = (WEIGHT * minmax(score) + (1 - WEIGHT) * minmax(retrieval)).astype(np.float32)
        np.testing.assert_allclose([r["fused_score"] for r in rows], want, atol=1e-6, rtol=0)
        by_fused = sorted(rows, key=lambda r: (-r["fused_score"], r["candidate_id"]))
        assert [r["candidate_id"] for r in rows] == [r["candidate_id"] for r in by_fused]
        assert [r["rank"] for r in rows] == [1, 2, 3, 4]
        by_score = sorted(rows, key=lambda r: (-r["score"], r["candidate_id"]))
        reordered += [r["candidate_id"] for r in by_score] != [r["candidate_id"] for r in rows]
    assert reordered, "fusion changed no query's order: the test would not tell rank by score from it"
    assert_complete_and_equal_to_predict(out, table, qwen3_causal)

    manifest = uris.read_json(str(out / "manifest.json"))
    assert (manifest["config"]["fuse"], manifest["config"]["fuse_weight"]) == ("linear", WEIGHT)
    assert manifest["identity"]["fusion"] == ["linear", WEIGHT]
    lines = [line.split() for line in (out / "run.trec").read_text().splitlines()]
    in_order = ranked.to_pylist()  # ranked/ is written query by query, in rank order, as run.trec
    assert [(q, d, int(r), float(s)) for q, _, d, r, s, _ in lines] == [
        (r["query_id"], r["candidate_id"], r["rank"], r["fused_score"]) for r in in_order
    ]


def test_fusion_without_its_column_or_weight_exits_2_before_ray(tmp_path, qwen3_causal, capsys):
    pq.write_table(fusion_pairs().drop(["retrieval_score"]), tmp_path / "no_score.parquet")
    argv = ["--model", str(qwen3_causal), "--output", str(tmp_path / "out"), "--fuse", "linear"]

    def fails_with(args, message):
        assert job.main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and message in err, err

    fails_with(
        [*argv, "--pairs", str(tmp_path / "no_score.parquet"), "--fuse-weight", "0.5"],
        "--fuse linear needs the column 'retrieval_score'",
    )
    pq.write_table(fusion_pairs(), tmp_path / "pairs.parquet")
    fails_with([*argv, "--pairs", str(tmp_path / "pairs.parquet")], "pass --fuse-weight W")
    fails_with([*argv, "--pairs", str(tmp_path / "pairs.parquet"), "--fuse-weight", "2"], "--fuse-weight")
    assert not (tmp_path / "out").exists()
