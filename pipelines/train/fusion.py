"""The trained model's linear fusion weight, tuned on the training run's own validation queries and written
as `fusion.json` into the model directory, where `jobs.rerank --fuse linear` (without `--fuse-weight`) reads
it (`pipelines.rerank.fuse`).

Only when the run has evaluation queries (`--eval-queries`) and their candidates come from the embedder's
mining (`--embed-model`), so each candidate holds a real first-stage score (`retrieval_score`, the cosine
similarity). The exported model scores every evaluation candidate on the driver, as scoring does
(`CrossEncoder.predict` with the prompt training and scoring use, float32 weights), and `tune_weight` (the
grid search of `jobs.evaluate --tune-fusion`: w = 0.00, 0.05, ..., 1.00, best mean nDCG@10, ties to the
larger w) picks the weight against the evaluation judgements. Never tuned on the training queries.

The weight fits the first stage it was tuned with (the mining embedder's cosine scores); fusing another
first stage's scores wants its own weight (`jobs.evaluate --tune-fusion` on validation queries).
"""

from __future__ import annotations

import json
import os
from dataclasses import replace

import pyarrow as pa

from actors.reranker.spec import RerankerSpec, default_prompt, load_cross_encoder
from pipelines.evaluate.tune import TUNE_METRIC, tune_weight
from pipelines.rerank.fuse import FUSION_FILE
from pipelines.train.evaluator import RerankEvaluator
from schemas.columns import CANDIDATE_ID, QUERY_ID, RETRIEVAL_SCORE, SCORE
from schemas.qrels import Qrels

TUNED_ON = "the validation queries (--eval-queries) of this training run"


def skipped(evaluation: pa.Table | None, mined: bool) -> str | None:
    """Why a run gets no fusion weight, or None when it gets one."""
    if evaluation is None:
        return "no --eval-queries: the fusion weight is tuned only on validation queries"
    if not mined:
        return (
            "no --embed-model: the evaluation candidates have no first-stage retrieval score to fuse with; "
            "tune one with jobs.evaluate --tune-fusion on a validation run"
        )
    if not evaluation.num_rows or evaluation.column(RETRIEVAL_SCORE).null_count == evaluation.num_rows:
        return "the evaluation queries have no mined candidates"
    return None


def tune_model_fusion(
    spec: RerankerSpec,
    model_dir: str,
    evaluation: pa.Table,
    qrels: Qrels,
    where: dict,
) -> dict:
    """Score `evaluation` (the eval candidates table, with `retrieval_score`) with the model in the local
    directory `model_dir`, tune the weight against `qrels` (the evaluation queries' judgements only) and
    write `model_dir/fusion.json`. `where`: provenance for `tuned_on` (candidates, qrels, first stage).
    Returns the manifest's `fusion` entry."""
    model_spec = replace(spec, model=model_dir, revision=None)
    model = load_cross_encoder(model_spec)
    prompt = default_prompt(model_spec, model)
    scores = RerankEvaluator(evaluation, qrels, prompt).scores(model)
    rows = pa.table(
        {
            QUERY_ID: evaluation.column("query_id"),
            CANDIDATE_ID: evaluation.column("doc_id"),
            SCORE: pa.array(scores, pa.float32()),
            RETRIEVAL_SCORE: evaluation.column(RETRIEVAL_SCORE).cast(pa.float32()),
        }
    )
    tuned = tune_weight(rows, qrels, name="the evaluation candidates")
    grid = tuned["grid"]
    document = {
        "method": "linear",
        "weight": tuned["weight"],
        "tuned_on": {
            "queries_of": TUNED_ON,
            **where,
            "prompt": prompt,
            "queries": tuned["queries"],
            "metric": TUNE_METRIC,
            TUNE_METRIC: tuned[TUNE_METRIC],
            "grid": {f"{w:.2f}": v for w, v in grid.items()},
        },
    }
    with open(os.path.join(model_dir, FUSION_FILE), "w") as f:
        json.dump(document, f, indent=2)
    return {
        "weight": tuned["weight"],
        TUNE_METRIC: tuned[TUNE_METRIC],
        f"reranker_alone_{TUNE_METRIC}": grid[1.0],
        f"retrieval_alone_{TUNE_METRIC}": grid[0.0],
        "queries": tuned["queries"],
        "file": FUSION_FILE,
    }
