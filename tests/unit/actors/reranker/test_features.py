"""Features made once and collated per micro-batch: a row's features survive Arrow, and collating rows
gives the tensors the processor itself would have built for them together."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from actors.reranker.features import Collator, RowFeatures, from_table, split_rows, to_columns
from pipelines.rerank.rank import rank_group
from pipelines.rerank.run import actor_time
from schemas import columns as c


def processor_batch(rows: list[list[int]], side: str, pad: int = 7) -> dict:
    """What a tokenizer returns for `rows` padded together."""
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    types = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        span = slice(width - len(r), width) if side == "left" else slice(0, len(r))
        ids[i, span], mask[i, span], types[i, span] = torch.tensor(r), 1, 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "modality": "text"}


def test_split_then_collate_gives_back_the_processor_batch():
    rows = [[1, 2, 3], [4], [5, 6, 8, 9, 10]]
    for side in ("left", "right"):
        batch = processor_batch(rows, side)
        split = split_rows(batch)
        assert [r.ids.tolist() for r in split] == rows
        collated = Collator(side, 7)(split)
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            assert torch.equal(collated[key], batch[key]), (side, key)
        assert collated["modality"] == "text"
        # A sub-batch is padded to its own longest row, as the processor pads it.
        sub = Collator(side, 7)([split[0], split[1]])
        assert torch.equal(sub["input_ids"], processor_batch(rows[:2], side)["input_ids"])


def test_non_token_tensors_concatenate_and_batches_of_them_go_row_by_row():
    one = {"input_ids": torch.tensor([[1, 2]]), "attention_mask": torch.ones(1, 2, dtype=torch.long)}
    a = split_rows({**one, "pixel_values": torch.ones(4, 3), "image_grid_thw": torch.tensor([[1, 2, 2]])})[0]
    b = split_rows({**one, "pixel_values": torch.zeros(6, 3), "image_grid_thw": torch.tensor([[1, 2, 3]])})[0]
    collated = Collator("left", 0)([a, b])
    assert collated["pixel_values"].shape == (10, 3) and collated["image_grid_thw"].tolist() == [
        [1, 2, 2],
        [1, 2, 3],
    ]
    two = {
        "input_ids": torch.tensor([[1, 2], [3, 4]]),
        "attention_mask": torch.ones(2, 2, dtype=torch.long),
        "pixel_values": torch.ones(10, 3),
    }
    assert split_rows(two) is None  # patches of two rows cannot be told apart: preprocess row by row
    assert a.signature() != RowFeatures(np.array([1])).signature()  # never batched with plain text


def test_features_survive_arrow():
    rows = [RowFeatures(np.array([3, 4, 5], np.int32), const={"modality": "message"}), None]
    rows.append(RowFeatures(np.array([9], np.int32), rows={"pixel_values": np.ones((2, 2), np.float32)}))
    table = pa.table(to_columns(rows))
    assert table.column(c.ROW_TOKENS).to_pylist() == [3, 0, 1]
    back = from_table(table, np.array([0, 2]))
    assert back[0].ids.tolist() == [3, 4, 5] and back[0].const == {"modality": "message"}
    assert back[1].rows["pixel_values"].tolist() == [[1, 1], [1, 1]]


def test_rank_group_sorts_with_arrow_ties_by_candidate_then_input_order():
    group = pa.table(
        {
            c.QUERY_ID: ["q"] * 4,
            c.CANDIDATE_ID: ["b", "a", "a", "c"],
            c.SCORE: pa.array([1.0, 1.0, 1.0, 2.0], pa.float32()),
            c.ROW_KEY: [3, 9, 2, 5],
        }
    )
    out = rank_group(group)
    assert out.column(c.CANDIDATE_ID).to_pylist() == ["c", "a", "a", "b"]
    assert out.column(c.RANK).to_pylist() == [1, 2, 3, 4]
    assert c.ROW_KEY not in out.column_names
    assert rank_group(group, top_k=2).num_rows == 2


def test_actor_time_shares_and_busy_fraction():
    stats = {
        "collate_s": 1.0,
        "forward_s": 8.0,
        "write_back_s": 1.0,
        "min_forward_start": 100.0,
        "max_forward_end": 110.0,
    }
    out = actor_time(stats, actors=1)
    assert out["forward_share"] == 0.8 and out["forward_busy"] == 0.8 and out["forward_window_s"] == 10.0
    assert out["preprocess_s"] == 0.0 and out["preprocess_share"] == 0.0  # a separate stage preprocessed
    own = actor_time({**stats, "preprocess_s": 10.0}, actors=1)  # the actor preprocessed its blocks
    assert own["preprocess_share"] == 0.5 and own["forward_share"] == 0.4 and own["forward_busy"] == 0.8
    assert actor_time(stats, actors=2)["forward_busy"] == 0.4
    assert actor_time(stats, actors=1, resumed_pairs=5)["forward_busy"] is None


def test_ranking_many_queries_at_once_equals_ranking_each_group():
    rng = np.random.default_rng(0)
    n = 60
    table = pa.table(
        {
            c.QUERY_ID: [f"q{i % 4}" for i in range(n)],
            c.CANDIDATE_ID: [f"d{rng.integers(0, 8)}" for _ in range(n)],
            c.SCORE: pa.array(rng.integers(0, 3, n).astype(np.float32)),
            c.ROW_KEY: rng.permutation(n),
        }
    )
    for top_k in (None, 3):
        want = []
        for q in sorted(set(table.column(c.QUERY_ID).to_pylist())):
            group = table.filter(pa.compute.equal(table.column(c.QUERY_ID), q))
            want += rank_group(group, top_k).to_pylist()
        assert rank_group(table, top_k).to_pylist() == want
