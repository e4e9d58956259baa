"""The reranker is loaded when a block first has a pair to score: a block answered wholly by the score cache
(an unchanged night) or wholly failed loads nothing, in the scoring actor and in the preprocess tasks; the
first block with a pair to score loads it and is scored as `CrossEncoder.predict` scores it (no Ray)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from sentence_transformers import CrossEncoder

from actors.reranker import preprocess
from actors.reranker.spec import RerankerSpec
from actors.reranker.worker import RerankWorker
from pipelines.rerank.validate import validate_pairs
from schemas import columns as c

PAIRS = [("q0", "d0", "ray data streams", "blocks to actors"), ("q0", "d1", "ray data streams", "models")]


def block(cached: list[float | None], failed: int | None = None) -> pa.Table:
    names = [c.QUERY_ID, c.CANDIDATE_ID, "query_text", "candidate_text"]
    table = validate_pairs(pa.Table.from_pylist([dict(zip(names, r, strict=True)) for r in PAIRS]))
    if failed is not None:
        errors = [None] * table.num_rows
        errors[failed] = "query_text is null"
        table = table.set_column(table.schema.get_field_index(c.ROW_ERROR), c.ROW_ERROR, pa.array(errors))
    return table.append_column(c.ROW_CACHED_SCORE, pa.array(cached, pa.float32()))


def test_cached_and_failed_rows_load_no_model_and_the_first_pair_to_score_does(qwen3_causal, monkeypatch):
    spec = RerankerSpec(model=str(qwen3_causal), max_length=64).validate()
    worker = RerankWorker(spec)
    out = worker(block([0.25, 0.75]))
    assert worker.model is None, "a block answered by the cache must not load the weights"
    assert out.column(c.SCORE).to_pylist() == [0.25, 0.75]
    assert out.column(c.ROW_TOKENS).to_pylist() == [0, 0]

    out = worker(block([0.5, None], failed=1))
    assert worker.model is None, "a failed row is not scored"
    assert out.column(c.SCORE).to_pylist() == [0.5, None]

    loads = []
    monkeypatch.setattr(preprocess, "featurizer_for", lambda *a: loads.append(a))
    preprocess.preprocess_block(block([0.25, 0.75]), spec)
    assert loads == [], "the preprocess task loads nothing for cached rows"

    out = worker(block([0.25, None]))
    assert worker.model is not None
    want = CrossEncoder(str(qwen3_causal), max_length=64).predict([PAIRS[1][2:]])
    np.testing.assert_allclose(out.column(c.SCORE).to_numpy()[1], want[0], atol=1e-5, rtol=0)
    assert out.column(c.SCORE).to_pylist()[0] == 0.25
