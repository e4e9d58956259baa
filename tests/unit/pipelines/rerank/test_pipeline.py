"""Pure stage functions of the rerank pipeline (no Ray)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from actors.token_budget import pack_by_tokens, padding_efficiency
from pipelines.rerank.inputs import check_inputs
from pipelines.rerank.rank import rank_group
from pipelines.rerank.validate import validate_pairs
from pipelines.storage import uris
from schemas.tables import InputError


def test_pack_by_tokens_respects_budget_and_keeps_every_row():
    rng = np.random.default_rng(0)
    lengths = rng.lognormal(4, 1, size=500).astype(int) + 1
    batches = pack_by_tokens(lengths, batch_tokens=2048)
    rows = np.concatenate([b.rows for b in batches])
    assert sorted(rows.tolist()) == list(range(500))
    for b in batches:
        assert b.padded_length == lengths[b.rows].max()
        assert b.padded_tokens <= 2048 or len(b.rows) == 1
    assert padding_efficiency(lengths, batches) > 0.9


def test_pack_by_tokens_gives_an_over_budget_row_its_own_batch():
    batches = pack_by_tokens(np.array([5000, 3, 3]), batch_tokens=100)
    assert [b.rows.tolist() for b in batches] == [[0], [1, 2]]


def test_validate_marks_rows_without_content_and_keeps_all_rows():
    table = pa.table(
        {
            "query_id": ["q", None, "q", "q"],
            "candidate_id": ["a", "b", "c", None],
            "query_text": ["x", "x", None, "x"],
            "candidate_text": ["y", "y", "y", "y"],
            "something_else": [1, 2, 3, 4],
        }
    )
    out = validate_pairs(table)
    assert out.num_rows == 4
    assert "something_else" not in out.column_names
    assert out.column("__error").to_pylist() == [
        None,
        "query_id is null",
        "query has no content: query_text/_image/_audio/_video all null",
        "candidate_id is null",
    ]


def test_rank_group_orders_by_score_then_candidate_id_and_cuts_top_k():
    group = pa.table(
        {
            "query_id": ["q"] * 5,
            "candidate_id": ["c", "b", "a", "d", "b"],
            "score": pa.array([0.5, 0.9, 0.5, 0.1, 0.9], pa.float32()),
            "retrieval_rank": pa.array([1, 2, 3, 4, 5], pa.int32()),
        }
    )
    out = rank_group(group).to_pylist()
    assert [(r["candidate_id"], r["rank"]) for r in out] == [("b", 1), ("b", 2), ("a", 3), ("c", 4), ("d", 5)]
    assert [r["retrieval_rank"] for r in out] == [2, 5, 3, 1, 4]
    assert rank_group(group, top_k=2).num_rows == 2


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        (
            {"query_id": ["q"], "query_text": ["x"], "candidate_text": ["y"]},
            "missing required column 'candidate_id'",
        ),
        ({"query_id": ["q"], "candidate_id": ["c"], "query_text": ["x"]}, "no candidate content column"),
        (
            {"query_id": ["q"], "candidate_id": ["c"], "query_text": ["x"], "candidate_text": [1.5]},
            "'candidate_text' has type double",
        ),
    ],
)
def test_check_inputs_one_line_errors(tmp_path, columns, message):
    pq.write_table(pa.table(columns), tmp_path / "p.parquet")
    with pytest.raises(InputError, match=message) as info:
        check_inputs(str(tmp_path / "p.parquet"))
    assert "\n" not in str(info.value)


def test_check_inputs_empty_and_missing(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        check_inputs(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no Parquet files"):
        check_inputs(str(tmp_path / "empty"))
    pq.write_table(
        pa.table(
            {
                "query_id": pa.array([], pa.string()),
                "candidate_id": pa.array([], pa.string()),
                "query_text": pa.array([], pa.string()),
                "candidate_text": pa.array([], pa.string()),
            }
        ),
        tmp_path / "zero.parquet",
    )
    with pytest.raises(InputError, match="has no rows"):
        check_inputs(str(tmp_path / "zero.parquet"))


def test_list_parquet_expands_dirs_and_globs(tmp_path):
    for i in range(3):
        pq.write_table(pa.table({"a": [i]}), tmp_path / f"part-{i}.parquet")
    (tmp_path / "_SUCCESS").write_text("")
    assert len(uris.list_parquet(str(tmp_path))) == 3
    assert len(uris.list_parquet(str(tmp_path / "part-[01].parquet"))) == 2
