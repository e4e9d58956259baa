"""The trained model's fusion weight: tuned on the evaluation candidates' predict scores and retrieval scores,
written where `jobs.rerank --fuse linear` reads it, and skipped (with a reason) when it cannot be tuned."""

from __future__ import annotations

import json
import random

import numpy as np
import pyarrow as pa

from actors.reranker.spec import RerankerSpec, load_cross_encoder
from pipelines.evaluate.tune import WEIGHTS, tune_weight
from pipelines.rerank.fuse import resolve_weight
from pipelines.train.fusion import skipped, tune_model_fusion
from pipelines.train.negatives import EVAL_SCHEMA
from tests.tiny_models import build_bert_cross_encoder

WORDS = ["ray", "data", "blocks", "actors", "models", "score", "pairs", "query"]


def candidates(seed: int = 0) -> tuple[pa.Table, dict]:
    rng = random.Random(seed)
    rows, qrels = [], {}
    for q in range(4):
        qid = f"e{q}"
        qrels[qid] = {f"d{q}-0": 1, f"d{q}-1": 0}
        for j in range(8):
            text = " ".join(rng.sample(WORDS, 3))
            rows.append((qid, f"d{q}-{j}", WORDS[q], text, rng.random()))
    return pa.Table.from_pylist(
        [dict(zip(EVAL_SCHEMA.names, r, strict=True)) for r in rows], EVAL_SCHEMA
    ), qrels


def test_the_weight_is_tune_weight_on_predict_scores_and_fuse_reads_it(tmp_path):
    model_dir = build_bert_cross_encoder(tmp_path / "model", seed=5)
    table, qrels = candidates()
    spec = RerankerSpec(model="unused-base", dtype="float32", device="cpu")
    entry = tune_model_fusion(spec, str(model_dir), table, qrels, {"candidates": "data/eval_candidates"})

    model = load_cross_encoder(RerankerSpec(model=str(model_dir), dtype="float32", device="cpu"))
    pairs = [(r["query"], r["document"]) for r in table.to_pylist()]
    rows = pa.table(
        {
            "query_id": table.column("query_id"),
            "candidate_id": table.column("doc_id"),
            "score": np.asarray(model.predict(pairs, show_progress_bar=False), dtype=np.float32),
            "retrieval_score": table.column("retrieval_score"),
        }
    )
    want = tune_weight(rows, qrels)
    assert entry["weight"] == want["weight"] in WEIGHTS and entry["ndcg@10"] == want["ndcg@10"]
    assert entry["reranker_alone_ndcg@10"] == want["grid"][1.0]
    assert entry["retrieval_alone_ndcg@10"] == want["grid"][0.0]
    # The file is the one `jobs.rerank --fuse linear` reads from the model directory.
    assert resolve_weight("linear", None, str(model_dir)) == want["weight"]
    document = json.loads((model_dir / "fusion.json").read_text())
    tuned_on = document["tuned_on"]
    assert tuned_on["queries"] == 4 and tuned_on["metric"] == "ndcg@10"
    assert tuned_on["candidates"] == "data/eval_candidates" and "validation queries" in tuned_on["queries_of"]
    assert set(tuned_on["grid"]) == {f"{w:.2f}" for w in WEIGHTS}


def test_no_weight_without_validation_queries_or_retrieval_scores():
    table, _ = candidates()
    assert "--eval-queries" in skipped(None, mined=True)
    assert "--embed-model" in skipped(table, mined=False)
    unscored = table.set_column(4, "retrieval_score", pa.nulls(table.num_rows, pa.float32()))
    assert "no mined candidates" in skipped(unscored, mined=True)
    assert skipped(table, mined=True) is None
