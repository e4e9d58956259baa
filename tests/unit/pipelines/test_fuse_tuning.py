"""`jobs.evaluate --tune-fusion` without Ray: the grid over w on a tiny hand-made run and qrels picks the
weight worked out by hand (a tie going to the larger w), and an evaluation on the driver writes
fusion.json into its own output folder and reports the weight."""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.evaluate.pipeline import prepare_evaluation, run_evaluation
from pipelines.evaluate.runs import RunInputError
from pipelines.evaluate.tune import WEIGHTS, tune_weight
from pipelines.rerank.fuse import resolve_weight

MISS = 1 / math.log2(3)  # nDCG@10 of one relevant document found at position 2 of 2


def run_rows(rows):
    """(query_id, candidate_id, score, retrieval_score) tuples as the ranked output's columns."""
    q, d, s, r = zip(*rows, strict=True)
    return pa.table(
        {
            "query_id": pa.array(q, pa.string()),
            "candidate_id": pa.array(d, pa.string()),
            "score": pa.array(s, pa.float32()),
            "retrieval_score": pa.array(r, pa.float32()),
        }
    )


# q1: the retriever is right. "a" (relevant) has the lower reranker score and the higher retrieval score:
# normalised, a = (0, 1) and b = (1, 0), so fused a = 1 - w, b = w, and a leads while w < 0.5. At w = 0.5
# they tie and trec_eval's order (doc id descending) puts b first: a miss.
RETRIEVER_RIGHT = [("q1", "a", 0.1, 2.0), ("q1", "b", 0.9, 1.0)]
# q2: the reranker is right: "c" (relevant) leads while w > 0.5; at 0.5, d (descending) comes first.
RERANKER_RIGHT = [("q2", "c", 0.9, 1.0), ("q2", "d", 0.1, 2.0)]
QRELS = {"q1": {"a": 1}, "q2": {"c": 1}}


def test_the_grid_is_0_to_1_in_steps_of_0_05():
    assert tuple(round(0.05 * i, 2) for i in range(21)) == WEIGHTS
    assert WEIGHTS[0] == 0.0 and WEIGHTS[-1] == 1.0 and 0.45 in WEIGHTS and 0.5 in WEIGHTS


def test_the_best_weight_is_the_largest_of_those_that_win():
    tuned = tune_weight(run_rows(RETRIEVER_RIGHT), {"q1": QRELS["q1"]})
    # By hand: nDCG@10 is 1 for w = 0.00 .. 0.45 (a first), 1/log2(3) from 0.50 on; the largest winner.
    assert tuned["weight"] == 0.45
    assert tuned["ndcg@10"] == 1.0
    assert tuned["queries"] == 1
    assert tuned["grid"] == {w: (1.0 if w < 0.5 else MISS) for w in WEIGHTS}


def test_a_tie_across_the_grid_goes_to_the_larger_weight_and_unjudged_queries_do_not_count():
    rows = run_rows([*RETRIEVER_RIGHT, *RERANKER_RIGHT, ("q9", "z", 0.5, 0.5)])
    tuned = tune_weight(rows, QRELS)
    # Every w but 0.5 finds one of the two relevant documents first: (1 + 1/log2(3)) / 2; w = 0.5 misses
    # both. All other weights tie, so the largest, 1.0 (the reranker alone), wins.
    assert tuned["weight"] == 1.0
    assert tuned["ndcg@10"] == pytest.approx((1 + MISS) / 2, abs=1e-12)
    assert tuned["grid"][0.5] == pytest.approx(MISS, abs=1e-12)
    assert tuned["queries"] == 2  # q9 has no judgements


def write_run(folder, table):
    (folder / "ranked").mkdir(parents=True)
    pq.write_table(table, folder / "ranked" / "part-0.parquet")
    return str(folder)


def test_evaluate_writes_fusion_json_into_its_output_and_reports_the_weight(tmp_path):
    run = write_run(tmp_path / "val_run", run_rows(RETRIEVER_RIGHT))
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\nq1\ta\t1\n")
    plan = prepare_evaluation(str(qrels), {"reranked": run}, [10], tune_fusion=True)
    out = tmp_path / "eval"
    metrics = run_evaluation(plan, str(out), driver_rows=1_000)  # few rows: on the driver, no Ray
    fusion = json.loads((out / "fusion.json").read_text())
    assert fusion["method"] == "linear" and fusion["weight"] == 0.45
    assert fusion["tuned_on"]["ndcg@10"] == 1.0 and fusion["tuned_on"]["queries"] == 1
    assert metrics["fusion"]["weight"] == 0.45
    report = (out / "report.md").read_text()
    assert "Fusion weight:** w = 0.45" in report and "nDCG@10 1.0000" in report
    assert not (tmp_path / "val_run" / "fusion.json").exists()  # never into an input
    model = tmp_path / "model"
    model.mkdir()
    (model / "fusion.json").write_text((out / "fusion.json").read_text())
    assert resolve_weight("linear", None, str(model)) == 0.45  # what --fuse linear then reads


def test_a_run_without_retrieval_score_cannot_be_tuned(tmp_path):
    table = run_rows(RETRIEVER_RIGHT).drop(["retrieval_score"])
    run = write_run(tmp_path / "run", table)
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\nq1\ta\t1\n")
    with pytest.raises(RunInputError, match="lacks column 'retrieval_score'"):
        prepare_evaluation(str(qrels), {"reranked": run}, [10], tune_fusion=True)
    prepare_evaluation(str(qrels), {"reranked": run}, [10])  # evaluating it is fine
