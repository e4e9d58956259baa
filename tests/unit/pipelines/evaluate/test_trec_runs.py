"""TREC run files as evaluation input, without Ray: recognised by extension or content, parsed as trec_eval
reads them (any whitespace, exact doubles, rank and tag ignored), bad lines refused in one line, and the
per-query metrics of the driver path equal pytrec_eval's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import pytrec_eval

from pipelines.evaluate.query import per_query_on_driver
from pipelines.evaluate.runs import RunInputError, parse_trec_lines, resolve_run
from schemas.qrels import read_qrels


def test_lines_parse_like_trec_eval_reads_them():
    rng = np.random.default_rng(1)
    scores = np.concatenate([rng.standard_normal(500) * 10.0 ** rng.integers(-20, 20, 500), [1e-05, -0.0]])
    lines = [f" q{i % 3}\tQ0  d{i} {999 - i} {s!r} tag \r" for i, s in enumerate(scores.tolist())]
    table = parse_trec_lines(pa.array([*lines, "", "   ", None], pa.string()), "bm25")
    assert table.column_names == ["query_id", "candidate_id", "score"]
    assert table.num_rows == len(scores)  # blank lines skipped
    assert np.array_equal(table["score"].to_numpy(), scores)  # the nearest double, as atof gives
    assert table["query_id"][4].as_py() == "q1" and table["candidate_id"][4].as_py() == "d4"


@pytest.mark.parametrize(
    ("line", "expected"),
    [("q Q0 d 1 2.0", "is not 'qid Q0 docid rank score tag'"), ("q Q0 d 1 high run", "score that is not")],
)
def test_a_bad_line_is_quoted_in_one_line(line, expected):
    with pytest.raises(RunInputError, match=expected) as info:
        parse_trec_lines(pa.array(["q Q0 a 1 3.5 run", line]), "bm25")
    assert line in str(info.value) and "run 'bm25'" in str(info.value)


@pytest.mark.parametrize("name", ["bm25.trec", "bm25.txt", "bm25.run", "bm25"])
def test_trec_file_recognised_by_extension_or_content(tmp_path, name):
    (tmp_path / name).write_text("q1 Q0 d1 1 2.5 bm25\n")
    source = resolve_run("bm25", str(tmp_path / name))
    assert (source.kind, source.files, source.score_column) == ("trec", (str(tmp_path / name),), "score")


def test_parquet_file_is_still_parquet(tmp_path):
    pq.write_table(pa.table({"query_id": ["q"], "candidate_id": ["d"], "score": [1.0]}), tmp_path / "r.bin")
    assert resolve_run("r", str(tmp_path / "r.bin")).kind == "ranked"


@pytest.mark.parametrize(
    ("name", "text", "suffix", "expected"),
    [
        ("bm25.trec", "q1 d1 1\n", "", "is not 'qid Q0 docid rank score tag'"),
        ("bm25.csv", "q1,d1,1\n", "", "neither Parquet nor a TREC run file"),
        ("bm25.trec", "q1 Q0 d1 1 2.5 t\n", ":ranked", "drop the :ranked suffix"),
    ],
)
def test_bad_trec_input_fails_on_the_driver(tmp_path, name, text, suffix, expected):
    (tmp_path / name).write_text(text)
    with pytest.raises(RunInputError, match=expected):
        resolve_run("bm25", str(tmp_path / name) + suffix)


def test_driver_path_metrics_equal_pytrec_eval(tmp_path: Path):
    # Ties in score (broken by doc id descending, not by the file's rank), ranks that contradict the scores,
    # a query without judgements and an unsorted file.
    run = {
        "q1": {"a": 2.0, "b": 2.0, "c": 1.5, "d": 0.25, "e": 2.0},
        "q2": {"x": 0.1, "y": 0.3, "z": 0.3},
        "q9": {"a": 1.0},
    }
    lines = [
        f"{q} Q0 {d} {i + 1} {s!r} bm25" for q, docs in run.items() for i, (d, s) in enumerate(docs.items())
    ]
    (tmp_path / "bm25.trec").write_text("\n".join(reversed(lines)) + "\n")
    qrels = {"q1": {"a": 1, "b": 2, "d": 1, "f": 3}, "q2": {"x": 1, "z": 0}}
    (tmp_path / "qrels.txt").write_text(
        "".join(f"{q} 0 {d} {r}\n" for q, ds in qrels.items() for d, r in ds.items())
    )
    source = resolve_run("bm25", str(tmp_path / "bm25.trec"))
    (table,) = per_query_on_driver((source,), read_qrels(str(tmp_path / "qrels.txt")), (1, 3))
    got = {r["query_id"]: r for r in table.to_pylist() if r["__judged"]}
    reference = pytrec_eval.RelevanceEvaluator(
        qrels, {"ndcg_cut.1,3", "P.1,3", "recall.1,3", "map"}
    ).evaluate(run)
    assert got.keys() == reference.keys() == {"q1", "q2"}
    for q, ref in reference.items():
        for k in (1, 3):
            assert got[q][f"ndcg@{k}"] == pytest.approx(ref[f"ndcg_cut_{k}"], abs=1e-12)
            assert got[q][f"p@{k}"] == pytest.approx(ref[f"P_{k}"], abs=1e-12)
            assert got[q][f"recall@{k}"] == pytest.approx(ref[f"recall_{k}"], abs=1e-12)
        assert got[q]["map"] == pytest.approx(ref["map"], abs=1e-12)
