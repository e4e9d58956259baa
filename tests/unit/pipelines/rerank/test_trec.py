"""The TREC run writer: one line per ranked row in file and rank order, the run id as tag, float32 scores
that read back exactly, ids that would split a line refused, a broken ranked output caught."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.rerank.trec import TREC_FILE, check_tag, write_run_file, write_trec_run
from schemas.settings import SettingError
from schemas.tables import InputError
from tests import media_files


def ranked_file(path: Path, rows: list[tuple[str, str, float]]) -> list[dict]:
    """Rows (query, candidate, score) ranked per query as the pipeline does: score descending, ties by
    candidate_id ascending; written in that order to `path`."""
    out = []
    for q in dict.fromkeys(r[0] for r in rows):
        mine = sorted((r for r in rows if r[0] == q), key=lambda r: (-np.float32(r[2]), r[1]))
        out += [
            {"query_id": q, "candidate_id": d, "score": s, "rank": i} for i, (_, d, s) in enumerate(mine, 1)
        ]
    table = pa.table(
        {
            "query_id": [r["query_id"] for r in out],
            "candidate_id": [r["candidate_id"] for r in out],
            "score": pa.array([r["score"] for r in out], pa.float32()),
            "rank": pa.array([r["rank"] for r in out], pa.int32()),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=7)  # several batches per file
    return table.to_pylist()


def test_lines_follow_the_ranked_files_with_exact_scores(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for q in range(6):
        scores = rng.standard_normal(9).astype(np.float32)
        scores[3] = scores[4]  # a tie: kept a tie
        scores[5] = np.float32(1e-7) * scores[5]  # tiny and long-tailed values round-trip too
        rows += [(f"q{q}", f"d{k}", float(s)) for k, s in enumerate(scores)]
    expected = ranked_file(tmp_path / "out" / "ranked" / "part-0.parquet", rows[:27])
    expected += ranked_file(tmp_path / "out" / "ranked" / "part-1.parquet", rows[27:])
    (tmp_path / "out" / "ranked" / "_SUCCESS").write_text("")  # not a ranked file

    target = write_run_file(True, str(tmp_path / "out"), "run-7")
    assert target == str(tmp_path / "out" / TREC_FILE)
    lines = Path(target).read_text().splitlines()
    assert len(lines) == len(expected) == 54
    for line, row in zip(lines, expected, strict=True):
        qid, q0, doc, rank, score, tag = line.split(" ")
        assert (qid, q0, doc, int(rank), tag) == (
            row["query_id"],
            "Q0",
            row["candidate_id"],
            row["rank"],
            "run-7",
        )
        assert float(score) == row["score"] and np.float32(float(score)) == np.float32(row["score"])
        assert score == repr(float(np.float32(row["score"])))


def test_no_trec_run_removes_a_stale_file(tmp_path):
    (tmp_path / TREC_FILE).write_text("old\n")
    assert write_run_file(False, str(tmp_path), "r") is None
    assert not (tmp_path / TREC_FILE).exists()


def test_empty_ranked_output_gives_an_empty_file(tmp_path):
    (tmp_path / "ranked").mkdir()
    assert write_trec_run(str(tmp_path / "ranked"), str(tmp_path / TREC_FILE), "r") == 0
    assert (tmp_path / TREC_FILE).read_text() == ""


@pytest.mark.parametrize("bad", ["doc 1", "", "tab\there"])
def test_an_id_that_would_split_a_line_is_refused_and_no_file_left(tmp_path, bad):
    ranked_file(tmp_path / "ranked" / "p.parquet", [("q1", "ok", 1.0), ("q1", bad, 0.5)])
    with pytest.raises(InputError, match="holds whitespace") as info:
        write_trec_run(str(tmp_path / "ranked"), str(tmp_path / TREC_FILE), "r")
    assert repr(bad) in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / TREC_FILE).exists()


def test_a_query_split_over_files_is_a_bug_caught(tmp_path):
    ranked_file(tmp_path / "ranked" / "a.parquet", [("q1", "d1", 1.0), ("q2", "d1", 1.0)])
    ranked_file(tmp_path / "ranked" / "b.parquet", [("q1", "d2", 0.5)])
    with pytest.raises(RuntimeError, match="query 'q1' are not together"):
        write_trec_run(str(tmp_path / "ranked"), str(tmp_path / TREC_FILE), "r")
    assert not (tmp_path / TREC_FILE).exists()


def test_ranks_out_of_order_are_a_bug_caught(tmp_path):
    pq.write_table(
        pa.table({"query_id": ["q", "q"], "candidate_id": ["a", "b"], "score": [1.0, 2.0], "rank": [2, 1]}),
        tmp_path / "p.parquet",
    )
    with pytest.raises(RuntimeError, match="ranks are not 1, 2, 3"):
        write_trec_run(str(tmp_path), str(tmp_path / "x" / TREC_FILE), "r")


def test_run_id_with_whitespace_refused_only_with_trec_run():
    with pytest.raises(SettingError, match="'my run' holds whitespace") as info:
        check_tag("my run", True)
    assert info.value.path == ("run_id",) and "'my_run'" in info.value.problem
    check_tag("my run", False)
    check_tag(None, True)


@pytest.fixture
def s3_bucket():
    """An S3-compatible server on 127.0.0.1 (moto) and a bucket on it, for this test only."""
    with media_files.s3_bucket("trec-bucket") as root:
        yield root


def test_object_storage_output_gives_the_same_file_and_evaluate_reads_it(tmp_path, s3_bucket):
    import s3fs

    from pipelines.evaluate.runs import read_trec_file, resolve_run

    rows = [(f"q{q}", f"d{k}", float(np.float32(k / 7 - q))) for q in range(3) for k in range(5)]
    ranked_file(tmp_path / "out" / "ranked" / "part-0.parquet", rows)
    fs = s3fs.S3FileSystem()
    fs.put(str(tmp_path / "out" / "ranked" / "part-0.parquet"), "trec-bucket/out/ranked/part-0.parquet")

    target = write_run_file(True, f"{s3_bucket}/out", "r1")
    assert target == f"{s3_bucket}/out/{TREC_FILE}"
    local = write_run_file(True, str(tmp_path / "out"), "r1")
    text = fs.cat_file(f"trec-bucket/out/{TREC_FILE}").decode()
    assert text == Path(local).read_text() and len(text.splitlines()) == 15

    source = resolve_run("ours", target)
    assert source.kind == "trec"
    table = read_trec_file(source)
    assert table["score"].to_pylist() == [float(line.split()[4]) for line in text.splitlines()]
