"""Evaluation on a shared local Ray: metrics.json equals pytrec_eval, report/plot/TREC files, CLI errors."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import pytrec_eval
from scipy import stats

from pipelines.evaluate.metrics import metric_names
from pipelines.evaluate.pipeline import evaluate_runs
from pipelines.evaluate.runs import RunInputError

REPO = Path(__file__).resolve().parents[2]
KS = [1, 3, 5, 10, 100]


def _collection(root: Path) -> dict:
    """Qrels (Parquet and TREC text), a refresh run's candidates/ scattered over three files, and a ranked
    run that is better, misses two judged queries and holds one unjudged query."""
    rng = random.Random(3)
    qrels, retrieval, reranked = {}, {}, {}
    for q in range(40):
        qid = f"q{q:02d}"
        docs = [f"d{q}-{i}" for i in range(25)]
        qrels[qid] = {d: rng.choice([0, 0, 1, 2, 3]) for d in rng.sample(docs, 15)}
        if q == 5:
            qrels[qid] = dict.fromkeys(docs[:3], 0)  # judged, nothing relevant
        # float32-exact, untied scores; reranked = relevance + small noise (a better ordering).
        noise = rng.sample(range(1000), 25)
        retrieval[qid] = {d: float(np.float32(n / 7.0)) for d, n in zip(docs, noise, strict=True)}
        if q not in (7, 8):
            reranked[qid] = {
                d: float(np.float32(qrels[qid].get(d, 0) * 300 + n / 3.0))
                for d, n in zip(docs, noise[::-1], strict=True)
            }
    reranked["unjudged"] = {"x1": 1.0, "x2": 0.5}

    rows = [(q, d, r) for q, docs in qrels.items() for d, r in docs.items()]
    pq.write_table(
        pa.table(
            {
                "query_id": [r[0] for r in rows],
                "doc_id": [r[1] for r in rows],
                "relevance": [r[2] for r in rows],
            }
        ),
        root / "qrels.parquet",
    )
    (root / "qrels.txt").write_text("".join(f"{q} 0 {d} {r}\n" for q, d, r in rows))

    cand = root / "refresh" / "candidates"
    cand.mkdir(parents=True)
    flat = [(q, d, s) for q, docs in retrieval.items() for d, s in docs.items()]
    rng.shuffle(flat)  # a query's candidates spread over every file: the groupby must bring them together
    for i in range(3):
        part = flat[i::3]
        pq.write_table(
            pa.table(
                {
                    "query_id": [p[0] for p in part],
                    "candidate_id": [p[1] for p in part],
                    "query_text": ["text"] * len(part),
                    "retrieval_score": pa.array([p[2] for p in part], pa.float32()),
                    "retrieval_rank": pa.array([1] * len(part), pa.int32()),
                }
            ),
            cand / f"part-{i}.parquet",
        )
    ranked = root / "rerank" / "ranked"
    ranked.mkdir(parents=True)
    out_rows = []
    for q, docs in reranked.items():
        ordered = sorted(docs.items(), key=lambda kv: -kv[1])
        out_rows += [(q, d, s, r) for r, (d, s) in enumerate(ordered, start=1)]
    pq.write_table(
        pa.table(
            {
                "query_id": [r[0] for r in out_rows],
                "candidate_id": [r[1] for r in out_rows],
                "score": pa.array([r[2] for r in out_rows], pa.float32()),
                "rank": pa.array([r[3] for r in out_rows], pa.int32()),
            }
        ),
        ranked / "part-0.parquet",
    )
    return {"qrels": qrels, "retrieval": retrieval, "reranked": reranked}


def _pytrec(qrels: dict, run: dict, ks: list[int]) -> dict[str, dict[str, float]]:
    cut = ",".join(map(str, ks))
    full = pytrec_eval.RelevanceEvaluator(qrels, {f"ndcg_cut.{cut}", f"P.{cut}", f"recall.{cut}", "map"})
    out = {}
    for q, v in full.evaluate(run).items():
        out[q] = {"map": v["map"]}
        for k in ks:
            out[q].update(
                {f"ndcg@{k}": v[f"ndcg_cut_{k}"], f"p@{k}": v[f"P_{k}"], f"recall@{k}": v[f"recall_{k}"]}
            )
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"})
    for k in ks:
        top = {q: dict(sorted(d.items(), key=lambda kv: -kv[1])[:k]) for q, d in run.items()}
        for q, v in rr.evaluate(top).items():
            out[q][f"mrr@{k}"] = v["recip_rank"]
    return out


def _assert_matches(run_metrics: dict, reference: dict, ks: list[int]) -> None:
    assert run_metrics["per_query"].keys() == reference.keys()
    for m in metric_names(ks):
        for q, values in reference.items():
            assert abs(run_metrics["per_query"][q][m] - values[m]) <= 1e-9, (q, m)
        assert abs(run_metrics["mean"][m] - np.mean([v[m] for v in reference.values()])) <= 1e-9, m


@pytest.fixture(scope="module")
def evaluated(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    data = _collection(root)
    runs = {"retrieval": str(root / "refresh") + ":candidates", "reranked": str(root / "rerank")}
    metrics = evaluate_runs(str(root / "qrels.parquet"), runs, str(root / "out"), KS)
    return root, data, metrics


def test_metrics_json_equals_pytrec_eval(evaluated):
    root, data, metrics = evaluated
    on_disk = json.loads((root / "out" / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    for name in ("retrieval", "reranked"):
        _assert_matches(on_disk["runs"][name], _pytrec(data["qrels"], data[name], KS), KS)
    assert on_disk["runs"]["retrieval"]["queries_evaluated"] == 40
    assert on_disk["runs"]["reranked"]["queries_evaluated"] == 38
    assert on_disk["runs"]["reranked"]["queries_missing_from_run"] == 2
    assert on_disk["runs"]["reranked"]["queries_not_in_qrels"] == 1
    assert on_disk["runs"]["retrieval"]["kind"] == "candidates"


def test_comparison_is_paired_with_significance_and_counts(evaluated):
    _, _, metrics = evaluated
    (comparison,) = metrics["comparisons"]
    assert (comparison["baseline"], comparison["run"], comparison["queries"]) == ("retrieval", "reranked", 38)
    base, run = metrics["runs"]["retrieval"]["per_query"], metrics["runs"]["reranked"]["per_query"]
    common = sorted(run)
    a = np.array([base[q]["ndcg@10"] for q in common])
    b = np.array([run[q]["ndcg@10"] for q in common])
    s = comparison["metrics"]["ndcg@10"]
    assert s["delta"] == pytest.approx(np.mean(b - a), abs=1e-12)
    assert s["t_test_p"] == pytest.approx(stats.ttest_rel(b, a).pvalue)
    assert 0 < s["randomization_p"] < 0.01 and s["t_test_p"] < 0.01
    assert (s["improved"], s["hurt"], s["tied"]) == (
        int((b > a).sum()),
        int((b < a).sum()),
        int((b == a).sum()),
    )


def test_report_plot_and_trec_files(evaluated):
    root, data, metrics = evaluated
    out = root / "out"
    report = (out / "report.md").read_text()
    s = metrics["comparisons"][0]["metrics"]["ndcg@10"]
    verdict = report.splitlines()[2]
    assert verdict.startswith("**Verdict:** **reranked** beats **retrieval** on nDCG@10 by ")
    assert f"{s['delta']:+.4f}" in verdict and "significant" in verdict and "not significant" not in verdict
    assert f"{s['improved']} of 38 queries improved" in verdict
    assert "| reranked | " in report and "p (t-test)" in report and "p (randomization)" in report

    from matplotlib.image import imread

    image = imread(out / "metrics.png")
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 400

    for name in ("retrieval", "reranked"):
        run: dict[str, dict[str, float]] = {}
        for line in (out / f"{name}.trec").read_text().splitlines():
            qid, q0, doc, rank, score, tag = line.split()
            assert (q0, tag) == ("Q0", name)
            run.setdefault(qid, {})[doc] = float(score)
            assert int(rank) == len(run[qid])  # a query's lines are together, ranked 1, 2, ... in order
        assert run == data[name]  # every pair, with the exact score trec_eval will read
        evaluated_ids = {q for q in run if q in data["qrels"]}
        reference = pytrec_eval.RelevanceEvaluator(data["qrels"], {"map"}).evaluate(run)
        assert set(reference) == evaluated_ids
        for q in evaluated_ids:
            assert abs(reference[q]["map"] - metrics["runs"][name]["per_query"][q]["map"]) <= 1e-9


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jobs.evaluate", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def test_cli_with_trec_qrels_text(evaluated, ray_session):
    import ray

    root, data, _ = evaluated
    ks = [1, 5, 10]
    result = _cli(
        "--qrels", str(root / "qrels.txt"),
        "--run", f"retrieval={root / 'refresh' / 'candidates'}",
        "--run", f"reranked={root / 'rerank'}:ranked",
        "--output", str(root / "cli-out"),
        "--k", "1,5,10",
        "--ray-address", ray.get_runtime_context().gcs_address,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "reranked beats retrieval on nDCG@10" in result.stdout
    assert f"report:  {root / 'cli-out' / 'report.md'}" in result.stdout
    metrics = json.loads((root / "cli-out" / "metrics.json").read_text())
    assert metrics["ks"] == ks and set(metrics["runs"]["reranked"]["mean"]) == set(metric_names(ks))
    for name in ("retrieval", "reranked"):
        _assert_matches(metrics["runs"][name], _pytrec(data["qrels"], data[name], ks), ks)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing_qrels", "qrels .*nope.txt: no such file"),
        ("bad_qrels_column", "missing column 'relevance'"),
        ("run_without_score", r"run 'bad': .* has neither 'score'"),
        ("bad_k", "--k: invalid _parse_ks value|cutoffs must be distinct positive integers"),
    ],
)
def test_cli_bad_input_fails_in_one_line(evaluated, tmp_path, case, expected):
    import re

    root = evaluated[0]
    qrels, run, ks = str(root / "qrels.parquet"), f"reranked={root / 'rerank'}", "1,10"
    if case == "missing_qrels":
        qrels = str(tmp_path / "nope.txt")
    elif case == "bad_qrels_column":
        qrels = str(tmp_path / "q.parquet")
        pq.write_table(pa.table({"query_id": ["q"], "doc_id": ["d"], "grade": [1]}), qrels)
    elif case == "run_without_score":
        (tmp_path / "bad").mkdir()
        pq.write_table(pa.table({"query_id": ["q"], "candidate_id": ["d"]}), tmp_path / "bad" / "p.parquet")
        run = f"bad={tmp_path / 'bad'}"
    else:
        ks = "0,10"
    result = _cli("--qrels", qrels, "--run", run, "--output", str(tmp_path / "out"), "--k", ks)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0
    assert re.search(expected, lines[-1]), result.stderr
    if case != "bad_k":  # argparse prints its usage line first
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert not (tmp_path / "out").exists()  # failed before any cluster work


def test_duplicate_pairs_found_on_workers_fail_in_one_line(ray_session, tmp_path):
    (tmp_path / "ranked").mkdir()
    pq.write_table(
        pa.table(
            {"query_id": ["q1", "q1"], "candidate_id": ["d", "d"], "score": pa.array([1, 2], pa.float32())}
        ),
        tmp_path / "ranked" / "p.parquet",
    )
    (tmp_path / "qrels.txt").write_text("q1 0 d 1\n")
    with pytest.raises(RunInputError, match="candidate 'd' appears more than once") as info:
        evaluate_runs(str(tmp_path / "qrels.txt"), {"dup": str(tmp_path)}, str(tmp_path / "out"), [10])
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out" / "metrics.json").exists() and not (tmp_path / "out" / "dup.trec").exists()
