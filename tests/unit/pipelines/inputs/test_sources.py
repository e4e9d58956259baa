"""Input formats, column mappings, kept columns and the BEIR layout, checked on the driver (no Ray): what
a user gets is one line naming the file, the flag and the column, before any cluster work."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.inputs.beir import BeirDir, corpus_rows, document_text, query_rows
from pipelines.rerank.inputs import check_pairs
from schemas.qrels import QrelsError, read_qrels
from schemas.tables import InputError

REPO = Path(__file__).resolve().parents[4]
PAIRS = [
    {"qid": "007", "candidate_id": "0042", "question": "2020-01-01", "candidate_text": "NA", "tenant": "a"},
    {"qid": "010", "candidate_id": "0043", "question": "q", "candidate_text": "", "tenant": "b"},
]
RENAMES = ("query_id=qid", "query_text=question")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_csv(path: Path, rows: list[dict]) -> Path:
    header = list(rows[0])
    lines = [",".join(header)]
    for r in rows:
        lines.append(",".join('""' if r[k] == "" else ("" if r[k] is None else str(r[k])) for k in header))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_text_formats_are_checked_on_the_driver_with_ids_and_text_as_strings(tmp_path, fmt):
    path = (write_jsonl if fmt == "jsonl" else write_csv)(tmp_path / f"p.{fmt}", PAIRS)
    plan = check_pairs(str(path), "auto", RENAMES, ("tenant",))
    assert plan.source.format == fmt and plan.files == [str(path)]
    assert plan.keep == ("tenant",) and plan.rename == (("qid", "query_id"), ("question", "query_text"))
    assert not plan.media
    (schema,) = plan.source.schemas().values()
    # "007" and a date-looking query text stay strings (JSON: never inferred as a number or a timestamp).
    for name in ("query_id", "candidate_id", "query_text", "candidate_text"):
        assert schema.field(name).type == pa.string(), (fmt, name, schema)


def test_a_mapping_that_misses_or_clashes_fails_in_one_line(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", PAIRS)
    with pytest.raises(
        InputError, match=r"p\.jsonl: --column query_text=title: the input has no column 'title'"
    ):
        check_pairs(str(path), "auto", ("query_id=qid", "query_text=title"))
    with pytest.raises(InputError, match="the input also has a column 'candidate_text'"):
        check_pairs(str(path), "auto", (*RENAMES, "candidate_text=tenant"))
    with pytest.raises(InputError, match="missing required column 'query_id'"):
        check_pairs(str(path), "auto")  # without the mapping the contract's column is missing
    with pytest.raises(InputError, match=r"--keep-columns 'url': no such input column"):
        check_pairs(str(path), "auto", RENAMES, ("url",))


def test_star_keeps_every_input_column_and_media_is_seen_in_text_formats(tmp_path):
    rows = [
        {"query_id": "q", "candidate_id": "d", "query_text": "x", "candidate_image": "/a.png", "url": "u"}
    ]
    plan = check_pairs(str(write_jsonl(tmp_path / "p.jsonl", rows)), "auto", None, ("*",))
    assert plan.keep == ("query_id", "candidate_id", "query_text", "candidate_image", "url")
    assert plan.media


def test_format_from_extension_flag_or_one_line(tmp_path):
    (tmp_path / "mixed").mkdir()
    write_jsonl(tmp_path / "mixed" / "a.jsonl", PAIRS)
    write_csv(tmp_path / "mixed" / "b.csv", PAIRS)
    with pytest.raises(InputError, match="holds files of several formats \\(csv, jsonl\\); pass --format"):
        check_pairs(str(tmp_path / "mixed"))
    assert check_pairs(str(tmp_path / "mixed"), "csv", RENAMES).files == [str(tmp_path / "mixed" / "b.csv")]
    odd = write_jsonl(tmp_path / "pairs.txt", PAIRS)
    with pytest.raises(InputError, match=r"cannot tell the format from the file names.*pass --format"):
        check_pairs(str(odd))
    assert check_pairs(str(odd), "jsonl", RENAMES).source.format == "jsonl"
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(InputError, match="the input has no rows"):
        check_pairs(str(tmp_path / "empty.jsonl"))
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(InputError, match=r"bad\.jsonl: not readable as JSON Lines") as info:
        check_pairs(str(tmp_path / "bad.jsonl"))
    assert "\n" not in str(info.value)


def test_parquet_columns_are_renamed_too(tmp_path):
    pq.write_table(pa.Table.from_pylist(PAIRS), tmp_path / "p.parquet")
    plan = check_pairs(str(tmp_path / "p.parquet"), "auto", RENAMES)
    assert plan.source.format == "parquet" and plan.rename


def _cli(job: str, argv: list[str], capsys) -> tuple[int, str]:
    import importlib

    code = importlib.import_module(f"jobs.{job}").main(argv)
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--column", "query_text"], "error: --column: 'query_text': expected COLUMN=INPUT"),
        (["--column", "title=t"], "error: --column: 'title=t': 'title' is not a column this job reads"),
        (["--keep-columns", "score"], "error: --keep-columns: 'score': the ranked output writes its own"),
        (["--keep-columns", "a,*"], "error: --keep-columns: 'a,*': '*' keeps every column; give it alone"),
        (["--keep-columns", "__error"], "error: --keep-columns: '__error': names starting with '__'"),
    ],
)
def test_rerank_flags_fail_in_one_line(tmp_path, capsys, extra, message):
    pq.write_table(pa.Table.from_pylist(PAIRS), tmp_path / "p.parquet")
    argv = ["--pairs", str(tmp_path / "p.parquet"), "--model", str(tmp_path), "--output", str(tmp_path / "o")]
    code, err = _cli("rerank", [*argv, *extra], capsys)
    assert code == 2 and err.startswith(message) and "\n" not in err, err


# ------------------------------------------------------------------------------------------------ BEIR


def write_beir(root: Path) -> Path:
    (root / "qrels").mkdir(parents=True)
    write_jsonl(
        root / "corpus.jsonl",
        [
            {"_id": "d1", "title": "Ray", "text": "streams blocks"},
            {"_id": "d2", "title": "", "text": "  no title  "},
            {"_id": "3", "text": "title key absent"},
        ],
    )
    write_jsonl(
        root / "queries.jsonl", [{"_id": "q1", "text": "what is ray"}, {"_id": "q9", "text": "train"}]
    )
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\t3\t0\n")
    return root


def test_beir_documents_join_title_and_text_as_beir_does_and_queries_follow_the_split(tmp_path):
    assert document_text("Ray", "streams") == "Ray streams"
    assert document_text("", "  text ") == "text" and document_text(None, "t") == "t"
    beir = write_beir(tmp_path / "beir")
    corpus, queries = BeirDir(str(beir), "test").sources()
    assert corpus.transform is corpus_rows and corpus.files == (str(beir / "corpus.jsonl"),)
    raw = pa.Table.from_pylist(
        [{"_id": "d1", "title": "Ray", "text": "streams blocks"}, {"_id": "d2", "title": None, "text": "x"}]
    )
    assert corpus_rows(raw).to_pylist() == [
        {"doc_id": "d1", "doc_text": "Ray streams blocks"},
        {"doc_id": "d2", "doc_text": "x"},
    ]
    judged = sorted(read_qrels(str(beir / "qrels" / "test.tsv")))
    assert judged == ["q1"] and queries.transform_kwargs == {"judged": ["q1"]}
    q = pa.Table.from_pylist([{"_id": "q1", "text": "a"}, {"_id": "q9", "text": "b"}])
    assert query_rows(q, judged).to_pylist() == [{"query_id": "q1", "query_text": "a"}]


def test_beir_qrels_tsv_reads_with_its_header_and_fails_in_one_line(tmp_path):
    beir = write_beir(tmp_path / "beir")
    assert read_qrels(str(beir / "qrels" / "test.tsv")) == {"q1": {"d1": 2, "3": 0}}
    bad = tmp_path / "bad.tsv"
    bad.write_text("query-id\tcorpus-id\tscore\nq1\td1\n")
    with pytest.raises(QrelsError, match=r"bad\.tsv:2: expected 3 tab-separated fields"):
        read_qrels(str(bad))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--corpus", "c.parquet"], "error: --corpus: not with --beir: the corpus is DIR/corpus.jsonl"),
        (["--qrels", "q.tsv"], "error: --qrels: not with --beir: the judgements are DIR/qrels/<split>.tsv"),
        (["--split", "dev"], "error: --split: {beir}/qrels/dev.tsv: no such file (splits present: test)"),
        (["--keep-columns", "tenant"], "error: --keep-columns: 'tenant': the night's candidates hold only"),
        (["--column", "doc_text=body"], "error: --column: not with --beir"),
    ],
)
def test_refresh_beir_settings_fail_in_one_line(tmp_path, capsys, extra, message):
    beir = write_beir(tmp_path / "beir")
    model = str(tmp_path)
    argv = [
        "--beir",
        str(beir),
        "--embed-model",
        model,
        "--rerank-model",
        model,
        "--output",
        str(tmp_path / "o"),
    ]
    if extra[0] in ("--corpus", "--qrels"):
        (tmp_path / extra[1]).write_text("")
        extra = [extra[0], str(tmp_path / extra[1])]
    code, err = _cli("refresh", [*argv, *extra], capsys)
    assert code == 2 and err.startswith(message.format(beir=beir)) and "\n" not in err, err


def test_refresh_needs_corpus_and_queries_or_beir(tmp_path, capsys):
    argv = ["--embed-model", str(tmp_path), "--rerank-model", str(tmp_path), "--output", str(tmp_path / "o")]
    code, err = _cli("refresh", argv, capsys)
    assert (code, err) == (2, "error: --corpus: required: pass --corpus and --queries, or --beir DIR")


def test_console_scripts_name_each_jobs_main():
    import importlib
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["ray-rerank"] == "jobs.rerank:main"
    assert {"ray-rerank-refresh", "ray-rerank-evaluate"} <= set(scripts)
    for target in scripts.values():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), target


def test_the_api_validates_settings_as_the_cli_does_before_touching_the_dataset(tmp_path):
    from actors.reranker.spec import RerankerSpec
    from pipelines.api import rerank_dataset
    from schemas.settings import SettingError

    never_read = object()  # a bad setting fails before the Dataset (or Ray) is used
    with pytest.raises(SettingError, match=r"^reranker\.max_length: must be >= 8, got 4$"):
        rerank_dataset(never_read, RerankerSpec(model=str(tmp_path), max_length=4))
    with pytest.raises(SettingError, match=r"^keep_columns: 'rank': the ranked output writes its own"):
        rerank_dataset(never_read, RerankerSpec(model=str(tmp_path)), keep_columns=["rank"])
