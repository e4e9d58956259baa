"""TREC run files on the shared local Ray: `jobs.rerank --trec-run` writes run.trec whose lines are the ranked
rows (rank order, tag = run id, float32 scores read back exactly) and whose pytrec_eval metrics equal what
`jobs.evaluate` reports for the Parquet output; `jobs.evaluate` takes a user's hand-written TREC run beside
ours and reports pytrec_eval's numbers for it; a run id with whitespace is refused with --trec-run in one
line, exit 2. (The refresh's runs/<id>/run.trec is tested on its first night, in test_refresh.py.)"""

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

from pipelines.evaluate.metrics import metric_names
from pipelines.evaluate.pipeline import evaluate_runs
from tests.pairs_data import WORDS, write_shards

REPO = Path(__file__).resolve().parents[2]
KS = [1, 3, 5, 10]
RUN_ID = "night-7"


def trec_eval_order(docs: dict[str, float]) -> list[str]:
    """trec_eval's order: score descending, then doc id descending."""
    by_id = sorted(docs, reverse=True)
    return sorted(by_id, key=lambda d: -docs[d])


def pytrec(qrels: dict, run: dict, ks: list[int]) -> dict[str, dict[str, float]]:
    """pytrec_eval's per-query values under this project's metric names (mrr@k: recip_rank of the run cut
    at k in trec_eval's own order)."""
    cut = ",".join(map(str, ks))
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {f"ndcg_cut.{cut}", f"P.{cut}", f"recall.{cut}", "map"})
    out = {}
    for q, v in evaluator.evaluate(run).items():
        out[q] = {"map": v["map"]}
        for k in ks:
            out[q] |= {
                f"ndcg@{k}": v[f"ndcg_cut_{k}"],
                f"p@{k}": v[f"P_{k}"],
                f"recall@{k}": v[f"recall_{k}"],
            }
    for k in ks:
        top = {q: {d: docs[d] for d in trec_eval_order(docs)[:k]} for q, docs in run.items()}
        for q, v in pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top).items():
            out[q][f"mrr@{k}"] = v["recip_rank"]
    return out


def assert_matches(run_metrics: dict, reference: dict, ks: list[int]) -> None:
    assert run_metrics["per_query"].keys() == reference.keys()
    for m in metric_names(ks):
        for q, values in reference.items():
            assert abs(run_metrics["per_query"][q][m] - values[m]) <= 1e-9, (q, m)
        assert abs(run_metrics["mean"][m] - np.mean([v[m] for v in reference.values()])) <= 1e-9, m


def write_pairs(root: Path) -> tuple[Path, dict]:
    """Pairs of 6 queries x 9 candidates in three shards (a query may straddle two), and qrels: graded
    judgements, a judged query with nothing relevant, a relevant document no run retrieves, and a query
    without judgements."""
    rng = random.Random(11)
    rows, qrels = [], {}
    for q in range(6):
        qid = f"q{q}"
        for k in range(9):
            text = " ".join(rng.choice(WORDS) for _ in range(3 + k % 5))
            rows.append(
                {
                    "query_id": qid,
                    "candidate_id": f"d{q}-{k}",
                    "query_text": f"query {q}",
                    "candidate_text": text,
                }
            )
        if q < 5:
            qrels[qid] = {f"d{q}-{k}": rng.choice([0, 1, 2, 3]) for k in rng.sample(range(9), 5)}
            qrels[qid][f"unretrieved-{q}"] = 1
    qrels["q1"] = dict.fromkeys(qrels["q1"], 0)
    pairs = write_shards(pa.Table.from_pylist(rows), root / "pairs", shards=3)
    lines = "".join(f"{q} 0 {d} {r}\n" for q, docs in qrels.items() for d, r in docs.items())
    (root / "qrels.txt").write_text(lines)
    return pairs, qrels


@pytest.fixture(scope="module")
def reranked(ray_session, tmp_path_factory, qwen3_causal):
    from jobs import rerank

    root = tmp_path_factory.mktemp("trec")
    pairs, qrels = write_pairs(root)
    out = root / "out"
    argv = ["--pairs", str(pairs), "--model", str(qwen3_causal), "--max-length", "64", "--output", str(out)]
    argv += ["--run-id", RUN_ID, "--trec-run", "--progress-interval", "0"]
    assert rerank.main(argv) == 0
    return root, out, qrels


def test_trec_lines_are_the_ranked_rows_in_rank_order(reranked):
    _, out, _ = reranked
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["outputs"]["trec_run"] == str(out / "run.trec")
    files = sorted((out / "ranked").glob("*.parquet"))
    assert files  # (several ranked files streamed in order: tests/unit/pipelines/rerank/test_trec.py)
    rows = pa.concat_tables(pq.read_table(f) for f in files).to_pylist()
    lines = (out / "run.trec").read_text().splitlines()
    assert len(lines) == len(rows) == manifest["counts"]["ranked_rows"] == 54
    seen = []
    for line, row in zip(lines, rows, strict=True):
        qid, q0, doc, rank, score, tag = line.split(" ")
        assert (qid, q0, doc, int(rank), tag) == (
            row["query_id"],
            "Q0",
            row["candidate_id"],
            row["rank"],
            RUN_ID,
        )
        assert np.float32(float(score)) == np.float32(row["score"]) and float(score) == row["score"]
        if not seen or seen[-1] != qid:
            assert qid not in seen and int(rank) == 1  # query by query
            seen.append(qid)
    assert len(seen) == 6


def test_pytrec_eval_on_run_trec_equals_jobs_evaluate_on_parquet(reranked):
    root, out, qrels = reranked
    metrics = evaluate_runs(
        str(root / "qrels.txt"), {"parquet": str(out), "trec": str(out / "run.trec")}, str(root / "eval"), KS
    )
    with open(out / "run.trec") as f:
        run = pytrec_eval.parse_run(f)
    reference = pytrec(qrels, run, KS)
    assert set(reference) == {"q0", "q1", "q2", "q3", "q4"}
    assert_matches(metrics["runs"]["parquet"], reference, KS)
    assert metrics["runs"]["trec"]["kind"] == "trec"
    assert metrics["runs"]["trec"]["per_query"] == metrics["runs"]["parquet"]["per_query"]
    assert metrics["runs"]["parquet"]["queries_not_in_qrels"] == 1


def user_run() -> tuple[str, dict]:
    """A BM25 run as another tool writes it: tabs and runs of spaces, ties in score, ranks that contradict
    the scores, queries interleaved, a query the qrels lack, scores in exponent form."""
    rng = random.Random(5)
    run, lines = {}, []
    for q in [*(f"q{i}" for i in range(6)), "q-unjudged"]:
        docs = [f"d{q[1:]}-{k}" for k in range(9)]
        rng.shuffle(docs)
        run[q] = {d: float(rng.choice([12.5, 9.75, 9.75, 3.0, 1e-3, 2.5e-7])) for d in docs}
        lines += [f"{q}\tQ0   {d} {k + 1}  {run[q][d]!r} BM25" for k, d in enumerate(docs)]
    rng.shuffle(lines)
    return "\n".join(lines) + "\n", run


def test_jobs_evaluate_on_a_user_trec_run_equals_pytrec_eval(reranked, ray_session):
    import ray

    root, out, qrels = reranked
    text, run = user_run()
    (root / "bm25.txt").write_text(text)
    result = subprocess.run(
        [
            sys.executable, "-m", "jobs.evaluate",
            "--qrels", str(root / "qrels.txt"),
            "--run", f"bm25={root / 'bm25.txt'}",
            "--run", f"reranked={out}",
            "--output", str(root / "cli-eval"),
            "--k", ",".join(map(str, KS)),
            "--ray-address", ray.get_runtime_context().gcs_address,
        ],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((root / "cli-eval" / "metrics.json").read_text())
    with open(root / "bm25.txt") as f:
        assert pytrec_eval.parse_run(f) == run
    assert_matches(metrics["runs"]["bm25"], pytrec(qrels, run, KS), KS)
    assert metrics["runs"]["bm25"]["queries_not_in_qrels"] == 2  # q5 and q-unjudged
    (comparison,) = metrics["comparisons"]
    assert (comparison["baseline"], comparison["run"], comparison["queries"]) == ("bm25", "reranked", 5)
    report = (root / "cli-eval" / "report.md").read_text()
    assert "| bm25 | " in report and "| reranked | " in report


@pytest.mark.parametrize("job", ["rerank", "refresh"])
def test_run_id_with_whitespace_and_trec_run_exits_2_in_one_line(tmp_path, capsys, job):
    import importlib

    main = importlib.import_module(f"jobs.{job}").main
    common = ["--run-id", "night 7", "--trec-run", "--output", str(tmp_path / "out")]
    if job == "rerank":
        argv = ["--pairs", str(tmp_path / "pairs.parquet"), "--model", "m", *common]
    else:
        argv = [
            "--corpus",
            "c.parquet",
            "--queries",
            "q.parquet",
            "--embed-model",
            "e",
            "--rerank-model",
            "m",
            *common,
        ]
    assert main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == [
        "error: --run-id: 'night 7' holds whitespace, which the tag column of a TREC run line (--trec-run) "
        "cannot; use e.g. 'night_7'"
    ]
    assert not (tmp_path / "out").exists()
