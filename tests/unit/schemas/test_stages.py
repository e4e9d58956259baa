"""Stage contracts: the chain check fails in one line naming the stage and the column, the rerank chain passes
for a valid pairs file, and the declared columns are the ones the stage functions really add."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from actors.media.loader import MEDIA, PAYLOAD_COLUMNS, MediaSpec, resolve_media
from actors.reranker.worker import SCORE
from pipelines.rerank import inputs
from pipelines.rerank.inputs import RERANK_CHAIN, check_inputs
from pipelines.rerank.rank import RANK, rank_group
from pipelines.rerank.validate import VALIDATE, validate_pairs
from schemas import columns as c
from schemas.stages import Stage, check_chain
from schemas.tables import InputError

VALID_PAIRS = ["query_id", "candidate_id", "query_text", "candidate_text"]


def test_a_missing_column_fails_in_one_line_naming_the_stage_and_the_column():
    chain = [VALIDATE, RANK]  # the scoring stage, which adds `score`, is left out
    with pytest.raises(InputError) as info:
        check_chain(VALID_PAIRS, chain)
    assert str(info.value) == (
        "stage rank_per_query needs column 'score', which no earlier stage adds and the input lacks "
        "(earlier stages: validate)"
    )


def test_a_column_comes_from_the_input_or_an_earlier_stage_never_a_later_one():
    read, write = Stage("read", needs=("x",)), Stage("write", adds=("x",))
    check_chain(["x"], [read])
    check_chain([], [write, read])
    with pytest.raises(
        InputError, match=r"^f.parquet: stage read needs column 'x'.*\(earlier stages: none\)$"
    ):
        check_chain([], [read, write], where="f.parquet")


def test_the_rerank_chain_passes_for_a_valid_pairs_schema():
    assert [s.name for s in RERANK_CHAIN] == ["validate", "media", "score", "rank_per_query"]
    check_chain(VALID_PAIRS, RERANK_CHAIN)
    check_chain(["query_id", "candidate_id", "query_text", "candidate_image"], RERANK_CHAIN)


def test_check_inputs_runs_the_chain_before_any_cluster_work(tmp_path, monkeypatch):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({name: ["v"] for name in VALID_PAIRS}), path)
    assert check_inputs(str(path)) == [str(path)]
    needs_rank = Stage("report", needs=(c.RANK,))
    monkeypatch.setattr(inputs, "RERANK_CHAIN", (*RERANK_CHAIN, needs_rank))
    assert check_inputs(str(path)) == [str(path)]  # rank_per_query adds it
    monkeypatch.setattr(inputs, "RERANK_CHAIN", (VALIDATE, needs_rank))
    with pytest.raises(InputError, match=r"p\.parquet: stage report needs column 'rank'") as info:
        check_inputs(str(path))
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- the declarations match the functions


def test_validate_adds_what_it_declares():
    table = pa.table({"query_id": ["q"], "candidate_id": ["d"], "query_text": ["x"], "extra": [1]})
    assert set(validate_pairs(table).column_names) == set(VALIDATE.adds)


def test_media_adds_only_declared_columns():
    table = validate_pairs(
        pa.table({"query_id": ["q"], "candidate_id": ["d"], "query_text": ["x"], "candidate_image": [None]})
    )
    out = resolve_media(table, MediaSpec())
    added = set(out.column_names) - set(table.column_names)
    assert added == set(PAYLOAD_COLUMNS) and added <= set(MEDIA.adds)  # validate added every media column
    assert set(MEDIA.needs) <= set(table.column_names)


def test_rank_needs_and_adds_what_it_declares():
    group = pa.table(
        {"query_id": ["q", "q"], "candidate_id": ["a", "b"], "score": pa.array([0.1, 0.2], pa.float32())}
    )
    assert set(RANK.needs) == set(group.column_names)
    assert set(rank_group(group).column_names) - set(group.column_names) == set(RANK.adds)


def test_score_needs_what_validate_provides():
    assert set(SCORE.needs) <= set(VALIDATE.adds)
