"""Fused scores (`--fuse linear|rrf`) on hand-made tables, without Ray: the formulas computed by hand, the
ranking by fused_score with its ties, top-k after fusion, the checks that fail before scoring, and the
TREC run file and the evaluation following the fused order."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from actors.reranker.spec import RerankerSpec
from pipelines.evaluate.runs import resolve_run
from pipelines.rerank.config import RerankConfig
from pipelines.rerank.fuse import Fusion, check_columns, check_settings, resolve_weight
from pipelines.rerank.inputs import check_pairs
from pipelines.rerank.rank import rank_group
from pipelines.rerank.trec import write_trec_run
from schemas.settings import SettingError
from schemas.tables import InputError


def scored(query_ids, candidate_ids, scores, retrieval_scores=None, retrieval_ranks=None, row_keys=None):
    columns = {
        "query_id": pa.array(query_ids, pa.string()),
        "candidate_id": pa.array(candidate_ids, pa.string()),
        "score": pa.array(scores, pa.float32()),
        "retrieval_score": pa.array(retrieval_scores or [None] * len(scores), pa.float32()),
        "retrieval_rank": pa.array(retrieval_ranks or [None] * len(scores), pa.int32()),
    }
    if row_keys is not None:
        columns["__row_key"] = pa.array(row_keys, pa.int64())
    return pa.table(columns)


def by_candidate(table):
    return {r["candidate_id"]: r for r in table.to_pylist()}


def test_linear_is_the_weighted_sum_of_min_max_normalised_scores():
    t = scored(["q"] * 3, ["a", "b", "c"], [0.75, 0.25, 0.5], retrieval_scores=[10.0, 30.0, 20.0])
    out = rank_group(t, fusion=Fusion("linear", 0.3))
    # By hand: score 0.75, 0.25, 0.5 -> (s - 0.25) / 0.5 = 1, 0, 0.5; retrieval 10, 30, 20 -> 0, 1, 0.5.
    want = {"a": 0.3 * 1 + 0.7 * 0, "b": 0.3 * 0 + 0.7 * 1, "c": 0.3 * 0.5 + 0.7 * 0.5}
    rows = by_candidate(out)
    for cid, value in want.items():
        assert rows[cid]["fused_score"] == pytest.approx(value, abs=1e-7)
        assert out.schema.field("fused_score").type == pa.float32()
    assert out.column("candidate_id").to_pylist() == ["b", "c", "a"]  # by fused score, not by score
    assert out.column("rank").to_pylist() == [1, 2, 3]
    assert out.column_names[:5] == ["query_id", "candidate_id", "score", "fused_score", "rank"]
    assert out.column("score").to_pylist() == [0.25, 0.5, 0.75]  # the reranker's scores, unchanged


def test_rrf_adds_the_reciprocal_ranks_with_k_60_and_ties_go_by_candidate_id():
    # Reranker ranks: a 1, c 2, b 3; retrieval ranks: a 3, b 1, c 2.
    t = scored(["q"] * 3, ["b", "a", "c"], [1.0, 3.0, 2.0], retrieval_ranks=[1, 3, 2])
    out = rank_group(t, fusion=Fusion("rrf"))
    rows = by_candidate(out)
    assert rows["a"]["fused_score"] == np.float32(1 / (60 + 1) + 1 / (60 + 3))
    assert rows["b"]["fused_score"] == np.float32(1 / (60 + 3) + 1 / (60 + 1))
    assert rows["c"]["fused_score"] == np.float32(1 / (60 + 2) + 1 / (60 + 2))
    # a and b tie exactly (1/61 + 1/63 either way), both above c: the tie goes to candidate_id ascending.
    assert out.column("candidate_id").to_pylist() == ["a", "b", "c"]


def test_rrf_ranks_by_score_break_their_ties_as_the_ranking_does():
    # a and b tie on score: candidate_id ascending gives a rank 1, b rank 2; no retrieval rank (null).
    t = scored(["q"] * 2, ["b", "a"], [0.5, 0.5], retrieval_ranks=[None, None])
    rows = by_candidate(rank_group(t, fusion=Fusion("rrf")))
    assert rows["a"]["fused_score"] == np.float32(1 / 61)
    assert rows["b"]["fused_score"] == np.float32(1 / 62)


def test_a_query_whose_values_are_all_equal_normalises_to_zero():
    t = scored(["q"] * 3, ["c", "a", "b"], [0.5, 0.5, 0.5], retrieval_scores=[1.0, 2.0, 3.0])
    rows = by_candidate(rank_group(t, fusion=Fusion("linear", 0.6)))
    # score all equal -> 0; retrieval 1, 2, 3 -> 0, 0.5, 1 (for c, a, b).
    assert [rows[x]["fused_score"] for x in "cab"] == [np.float32(0.0), np.float32(0.2), np.float32(0.4)]
    flat = scored(["q"] * 3, ["c", "a", "b"], [0.5] * 3, retrieval_scores=[7.0] * 3, row_keys=[2, 1, 0])
    out = rank_group(flat, fusion=Fusion("linear", 0.6))
    assert out.column("fused_score").to_pylist() == [0.0, 0.0, 0.0]
    assert out.column("candidate_id").to_pylist() == ["a", "b", "c"]  # every tie: candidate_id ascending


def test_duplicate_candidates_tied_on_fused_score_keep_input_order():
    t = scored(
        ["q"] * 3, ["x", "x", "y"], [0.2, 0.2, 0.9], retrieval_scores=[5.0, 5.0, 1.0], row_keys=[7, 3, 5]
    )
    t = t.append_column("tag", pa.array(["key7", "key3", "key5"]))
    out = rank_group(t, keep=("tag",), fusion=Fusion("linear", 0.5))
    # x, x and y all fuse to 0.5 (score 0, 0, 1 and retrieval 1, 1, 0 normalised): candidate_id
    # ascending, then input order (the row key).
    assert out.column("fused_score").to_pylist() == [0.5, 0.5, 0.5]
    assert out.column("tag").to_pylist() == ["key3", "key7", "key5"]
    assert out.column("rank").to_pylist() == [1, 2, 3]


def test_top_k_is_applied_after_fusion_and_normalisation_sees_every_candidate():
    t = scored(["q"] * 3, ["a", "b", "c"], [0.75, 0.25, 0.5], retrieval_scores=[10.0, 30.0, 20.0])
    full = rank_group(t, fusion=Fusion("linear", 0.3))
    top = rank_group(t, top_k=1, fusion=Fusion("linear", 0.3))
    assert top.column("candidate_id").to_pylist() == ["b"]  # the fused best; a is the reranker's best
    assert top.to_pylist() == full.slice(0, 1).to_pylist()


def test_many_queries_at_once_equal_each_query_alone():
    t = scored(
        ["q1", "q2", "q1", "q2", "q1"],
        ["a", "a", "b", "b", "c"],
        [0.1, 5.0, 0.9, 1.0, 0.4],
        retrieval_scores=[3.0, 0.0, 1.0, 100.0, None],
        retrieval_ranks=[1, 2, 3, 1, None],
    )
    for fusion in (Fusion("linear", 0.25), Fusion("rrf")):
        alone = [rank_group(t.filter(pc.equal(t["query_id"], q)), fusion=fusion) for q in ("q1", "q2")]
        assert rank_group(t, fusion=fusion).to_pylist() == pa.concat_tables(alone).to_pylist()
    assert "fused_score" not in rank_group(t).column_names  # without fusion the output is as it always was


def test_a_null_retrieval_value_adds_nothing():
    t = scored(["q"] * 3, ["a", "b", "c"], [0.0, 1.0, 0.5], retrieval_scores=[4.0, 2.0, None])
    rows = by_candidate(rank_group(t, fusion=Fusion("linear", 0.5)))
    # retrieval min 2, max 4 over the values present: a 1, b 0; c's null counts 0.
    assert [rows[x]["fused_score"] for x in "abc"] == [np.float32(0.5), np.float32(0.5), np.float32(0.25)]


def test_a_missing_retrieval_column_is_one_line_naming_it(tmp_path):
    with pytest.raises(InputError, match="--fuse linear needs the column 'retrieval_score'"):
        check_columns(["query_id", "candidate_id", "retrieval_rank"], "linear", "pairs.parquet")
    with pytest.raises(InputError, match="--fuse rrf needs the column 'retrieval_rank'"):
        check_columns(["query_id", "candidate_id", "retrieval_score"], "rrf", "pairs.parquet")
    check_columns(["query_id"], None, "pairs.parquet")  # no fusion, nothing needed
    path = tmp_path / "pairs.parquet"
    pq.write_table(
        pa.table({"query_id": ["q"], "candidate_id": ["d"], "query_text": ["x"], "candidate_text": ["y"]}),
        path,
    )
    with pytest.raises(InputError) as info:
        check_pairs(str(path), fuse="linear")
    assert str(path) in str(info.value) and "'retrieval_score'" in str(info.value)
    assert "\n" not in str(info.value)
    check_pairs(str(path))  # the same pairs without --fuse are fine


def test_fuse_settings_and_the_weight_from_the_model_directory(tmp_path):
    with pytest.raises(SettingError, match="only with --fuse linear"):
        check_settings(None, 0.5)
    with pytest.raises(SettingError, match="only with --fuse linear"):
        check_settings("rrf", 0.5)
    with pytest.raises(SettingError, match=r"within 0\.\.1"):
        check_settings("linear", 1.5)
    model = tmp_path / "model"
    model.mkdir()
    assert resolve_weight("linear", 0.4, str(model)) == 0.4
    assert resolve_weight("rrf", None, str(model)) is None
    with pytest.raises(InputError, match="pass --fuse-weight W") as info:
        resolve_weight("linear", None, str(model))
    assert "--tune-fusion" in str(info.value)
    (model / "fusion.json").write_text(json.dumps({"method": "linear", "weight": 0.35, "tuned_on": {}}))
    assert resolve_weight("linear", None, str(model)) == 0.35
    assert resolve_weight("linear", 0.9, str(model)) == 0.9  # the flag wins
    (model / "fusion.json").write_text(json.dumps({"method": "linear", "weight": 3}))
    with pytest.raises(InputError, match=r"fusion\.json"):
        resolve_weight("linear", None, str(model))
    cfg = RerankConfig(
        pairs="p", output="o", reranker=RerankerSpec(model=str(model)), fuse="linear", fuse_weight=0.5
    )
    assert cfg.with_fusion_weight().fusion == Fusion("linear", 0.5)
    assert cfg.ranking_identity() == {"top_k": None, "fusion": ["linear", 0.5]}
    assert RerankConfig(pairs="p", output="o", reranker=RerankerSpec(model="m")).ranking_identity() == {
        "top_k": None
    }


def write_ranked(folder, table):
    folder.mkdir(parents=True)
    pq.write_table(table, folder / "part-0.parquet")


def test_trec_run_and_evaluation_follow_the_fused_score(tmp_path):
    t = scored(["q"] * 3, ["a", "b", "c"], [0.75, 0.25, 0.5], retrieval_scores=[10.0, 30.0, 20.0])
    ranked = rank_group(t, fusion=Fusion("linear", 0.3))
    write_ranked(tmp_path / "run" / "ranked", ranked)
    target = tmp_path / "run.trec"
    write_trec_run(str(tmp_path / "run" / "ranked"), str(target), "fused")
    lines = [line.split() for line in target.read_text().splitlines()]
    assert [(d, r) for _, _, d, r, _, _ in lines] == [("b", "1"), ("c", "2"), ("a", "3")]
    fused = ranked.column("fused_score").to_numpy().astype(np.float64).tolist()
    assert [float(s) for *_, s, _ in lines] == fused  # trec_eval orders by this column, as rank does
    assert resolve_run("fused", str(tmp_path / "run")).score_column == "fused_score"
    write_ranked(tmp_path / "plain" / "ranked", rank_group(t))
    assert resolve_run("plain", str(tmp_path / "plain")).score_column == "score"
