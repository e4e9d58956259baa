"""Metrics equal trec_eval's (through pytrec_eval) to 1e-9; qrels parsing; significance tests. No Ray."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import pytrec_eval

from pipelines.evaluate.metrics import (
    metric_names,
    paired_t_test,
    query_metrics,
    randomization_p_values,
    randomization_test,
    trec_order,
)
from schemas.qrels import QrelsError, read_qrels

KS = [1, 3, 5, 10, 100]
TOL = 1e-9


def _random_collection(seed: int, ties: bool) -> tuple[dict, dict]:
    """Qrels and a run over ~200 queries: graded 0-3, queries missing on either side, queries without
    relevant documents, unjudged retrieved documents; untied scores unless `ties`."""
    rng = random.Random(seed)
    qrels: dict[str, dict[str, int]] = {}
    run: dict[str, dict[str, float]] = {}
    for q in range(200):
        qid = f"q{q:03d}"
        pool = [f"doc{rng.randrange(10_000):05d}" for _ in range(rng.randint(1, 150))]
        pool = list(dict.fromkeys(pool))
        roll = rng.random()
        if roll > 0.1:  # 10% of queries: retrieved but never judged
            judged = rng.sample(pool, k=rng.randint(1, len(pool)))
            judged += [f"unretrieved{q}_{i}" for i in range(rng.randint(0, 5))]
            no_relevant = rng.random() < 0.1
            qrels[qid] = {d: 0 if no_relevant else rng.choice([0, 0, 0, 1, 2, 3]) for d in judged}
        if roll < 0.92:  # 8% of queries: judged but missing from the run
            if ties:
                run[qid] = {d: float(rng.randint(0, 4)) for d in pool}
            else:
                scores = rng.sample(range(1_000_000), k=len(pool))
                run[qid] = {d: s / 1000.0 - 300.0 for d, s in zip(pool, scores, strict=True)}
    return qrels, run


def _trec_eval(qrels: dict, run: dict, ks: list[int]) -> dict[str, dict[str, float]]:
    """pytrec_eval's values under our metric keys; MRR@k is recip_rank on each query cut at k."""
    cut = ",".join(map(str, ks))
    measures = {f"ndcg_cut.{cut}", f"P.{cut}", f"recall.{cut}", "map"}
    full = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    out = {q: {"map": v["map"]} for q, v in full.items()}
    for q, v in full.items():
        for k in ks:
            out[q][f"ndcg@{k}"] = v[f"ndcg_cut_{k}"]
            out[q][f"p@{k}"] = v[f"P_{k}"]
            out[q][f"recall@{k}"] = v[f"recall_{k}"]
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"})
    for k in ks:
        # Untied scores: the top k by score is unambiguous, so this cut does not rely on our tie rule.
        top = {q: dict(sorted(docs.items(), key=lambda kv: -kv[1])[:k]) for q, docs in run.items()}
        for q, v in rr.evaluate(top).items():
            out[q][f"mrr@{k}"] = v["recip_rank"]
    return out


def _ours(qrels: dict, run: dict, ks: list[int]) -> dict[str, dict[str, float]]:
    return {
        q: query_metrics(list(docs), list(docs.values()), qrels[q], ks)
        for q, docs in run.items()
        if q in qrels
    }


def _assert_close(ours: dict, reference: dict, names: list[str]) -> None:
    assert ours.keys() == reference.keys()
    for q in reference:
        for m in names:
            assert abs(ours[q][m] - reference[q][m]) <= TOL, (q, m, ours[q][m], reference[q][m])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_metric_equals_pytrec_eval_on_random_runs(seed: int) -> None:
    qrels, run = _random_collection(seed, ties=False)
    reference = _trec_eval(qrels, run, KS)
    ours = _ours(qrels, run, KS)
    _assert_close(ours, reference, metric_names(KS))
    # The collection exercises what it claims to: both kinds of missing query, and no-relevant queries.
    assert set(run) - set(qrels) and set(qrels) - set(run)
    assert any(all(r == 0 for r in qrels[q].values()) for q in ours)
    # Means over run ∩ qrels (trec_eval's default) agree as well.
    for m in metric_names(KS):
        assert (
            abs(np.mean([v[m] for v in ours.values()]) - np.mean([v[m] for v in reference.values()])) <= TOL
        )


def test_tied_scores_are_ordered_like_trec_eval() -> None:
    """Heavy ties (5 distinct scores): trec_eval breaks them by doc id descending, and so do we."""
    qrels, run = _random_collection(7, ties=True)
    cut = ",".join(map(str, KS))
    names = [m for m in metric_names(KS) if not m.startswith("mrr")]
    reference_raw = pytrec_eval.RelevanceEvaluator(
        qrels, {f"ndcg_cut.{cut}", f"P.{cut}", f"recall.{cut}", "map", "recip_rank"}
    ).evaluate(run)
    ours = _ours(qrels, run, [*KS, 100_000])
    for q, v in reference_raw.items():
        for m in names:
            key = {"ndcg": "ndcg_cut_", "p": "P_", "recall": "recall_"}.get(m.split("@")[0], "")
            ref = v["map"] if m == "map" else v[key + m.split("@")[1]]
            assert abs(ours[q][m] - ref) <= TOL, (q, m)
        assert abs(ours[q]["mrr@100000"] - v["recip_rank"]) <= TOL, q


def test_tie_order_is_score_descending_then_doc_id_descending() -> None:
    docs = ["a", "b", "c", "B", "é"]
    order = trec_order(docs, [1.0, 1.0, 2.0, 1.0, 1.0])
    # strcmp order of UTF-8 bytes: "é" (0xC3..) > "b" > "a" > "B".
    assert [docs[i] for i in order] == ["c", "é", "b", "a", "B"]
    # The one relevant document sits at rank 3 in that order, so pytrec_eval must agree on MRR = 1/3.
    qrels = {"q": {"b": 1}}
    run = {"q": dict(zip(docs, [1.0, 1.0, 2.0, 1.0, 1.0], strict=True))}
    assert pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(run)["q"]["recip_rank"] == 1 / 3
    assert query_metrics(docs, list(run["q"].values()), qrels["q"], [5])["mrr@5"] == 1 / 3


def test_query_without_relevant_documents_scores_zero() -> None:
    values = query_metrics(["a", "b"], [2.0, 1.0], {"a": 0, "z": 0}, [1, 10])
    assert values == dict.fromkeys(metric_names([1, 10]), 0.0)


def test_metric_names_cover_every_cutoff() -> None:
    assert metric_names([5, 10]) == [
        "ndcg@5", "ndcg@10", "mrr@5", "mrr@10", "recall@5", "recall@10", "p@5", "p@10", "map",
    ]  # fmt: skip


# ---------------------------------------------------------------------------------------------- stats


def test_paired_t_test_matches_scipy_and_handles_constant_differences() -> None:
    from scipy import stats

    rng = np.random.default_rng(0)
    a, b = rng.random(30), rng.random(30)
    assert paired_t_test(a, b) == pytest.approx(stats.ttest_rel(b, a).pvalue)
    assert paired_t_test(a, a) == 1.0
    assert paired_t_test(a, a + 0.1) == 0.0
    assert paired_t_test(a[:1], b[:1]) is None


def test_randomization_test_agrees_with_exact_enumeration() -> None:
    rng = np.random.default_rng(1)
    base = rng.random(10)
    run = base + rng.normal(0.1, 0.15, 10)
    diff = run - base
    flips = np.array(list(itertools.product([-1, 1], repeat=10)), dtype=np.float64)
    exact = np.mean(np.abs(flips @ diff) >= abs(diff.sum()) - 1e-12)
    assert randomization_test(base, run) == pytest.approx(exact, abs=0.02)
    # Several metrics at once share sign flips and give each metric its own p-value.
    both = randomization_p_values(np.stack([diff, np.zeros(10)], axis=1))
    assert both[0] == pytest.approx(exact, abs=0.02)
    assert both[1] == 1.0
    assert randomization_test(base[:0], run[:0]) is None


# ---------------------------------------------------------------------------------------------- qrels


def test_qrels_read_from_parquet_and_trec_text_agree(tmp_path) -> None:
    text = tmp_path / "qrels.txt"
    text.write_text("q1 0 d1 2\nq1 0 d2 0\n\nq2\tQ0\td9\t1\n")
    table = pa.table({"query_id": ["q1", "q1", "q2"], "doc_id": ["d1", "d2", "d9"], "relevance": [2, 0, 1]})
    pq.write_table(table, tmp_path / "qrels.parquet")
    expected = {"q1": {"d1": 2, "d2": 0}, "q2": {"d9": 1}}
    assert read_qrels(str(text)) == expected
    assert read_qrels(str(tmp_path / "qrels.parquet")) == expected
    (tmp_path / "dir").mkdir()
    pq.write_table(table, tmp_path / "dir" / "part-0.parquet")
    assert read_qrels(str(tmp_path / "dir")) == expected


def test_qrels_integer_ids_are_read_as_strings(tmp_path) -> None:
    pq.write_table(pa.table({"query_id": [1], "doc_id": [7], "relevance": [1]}), tmp_path / "q.parquet")
    assert read_qrels(str(tmp_path / "q.parquet")) == {"1": {"7": 1}}


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (pa.table({"query_id": ["q"], "doc": ["d"], "relevance": [1]}), "missing column 'doc_id'"),
        (pa.table({"query_id": ["q"], "doc_id": ["d"], "relevance": [0.5]}), "'relevance' has type double"),
        (pa.table({"query_id": ["q", None], "doc_id": ["d", "e"], "relevance": [1, 1]}), "1 null value"),
        (
            pa.table({"query_id": ["q", "q"], "doc_id": ["d", "d"], "relevance": [1, 0]}),
            "duplicate judgement",
        ),
    ],
)
def test_bad_parquet_qrels_fail_in_one_line_naming_the_problem(tmp_path, table, message) -> None:
    path = tmp_path / "qrels.parquet"
    pq.write_table(table, path)
    with pytest.raises(QrelsError, match=message) as info:
        read_qrels(str(path))
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [("q1 0 d1\n", r"qrels\.txt:1: expected 4 fields"), ("q1 0 d1 high\n", "'high' is not an integer")],
)
def test_bad_trec_qrels_name_the_line(tmp_path, content, message) -> None:
    path = tmp_path / "qrels.txt"
    path.write_text(content)
    with pytest.raises(QrelsError, match=message):
        read_qrels(str(path))


def test_missing_qrels_path_is_reported(tmp_path) -> None:
    with pytest.raises(QrelsError, match="no such file"):
        read_qrels(str(tmp_path / "nope.parquet"))


# ---------------------------------------------------------------------------------------------- report


def _document(run_values: dict[str, dict[str, float]]) -> dict:
    """metrics.json built from per-query nDCG-only values (other metrics 0), without Ray."""
    import pyarrow.fs as pafs

    from pipelines.evaluate.pipeline import EvaluationPlan, RunResult, _metrics_document
    from pipelines.evaluate.runs import RunSource

    ks = (10,)
    names = metric_names(ks)
    qrels = {q: {"d": 1} for q in next(iter(run_values.values()))}
    results = []
    for name, per_query in run_values.items():
        source = RunSource(name, f"/runs/{name}", "ranked", pafs.LocalFileSystem(), ("x.parquet",), 1)
        values = {m: np.array([per_query[q] if m == "ndcg@10" else 0.0 for q in per_query]) for m in names}
        results.append(RunResult(source, list(per_query), values, 0, f"{name}.trec", None))
    plan = EvaluationPlan("qrels.txt", qrels, tuple(r.source for r in results), ks)
    return _metrics_document(plan, results)


def test_report_says_when_a_run_is_worse_and_not_significant() -> None:
    from pipelines.evaluate.pipeline import format_summary
    from pipelines.evaluate.report import render_markdown, render_plot

    rng = np.random.default_rng(0)
    base = {f"q{i}": float(v) for i, v in enumerate(rng.random(12))}
    worse = {q: min(1.0, max(0.0, v + rng.normal(-0.02, 0.2))) for q, v in base.items()}
    metrics = _document({"old": base, "new": worse})
    s = metrics["comparisons"][0]["metrics"]["ndcg@10"]
    assert s["delta"] < 0 and s["t_test_p"] > 0.05
    report = render_markdown(metrics)
    assert report.splitlines()[2].startswith("**Verdict:** **new** is worse than **old** on nDCG@10 by -0.")
    assert "not significant at α=0.05" in report
    assert format_summary(metrics).splitlines()[0].startswith("new is worse than old on nDCG@10")
    assert render_plot(metrics).startswith(b"\x89PNG")


def test_report_with_a_single_run_has_nothing_to_compare() -> None:
    from pipelines.evaluate.report import render_markdown, render_plot

    metrics = _document({"only": {"q1": 0.5, "q2": 1.0}})
    assert metrics["comparisons"] == []
    assert "Only one run (only): nDCG@10 = 0.7500 over 2 queries" in render_markdown(metrics)
    assert render_plot(metrics).startswith(b"\x89PNG")
