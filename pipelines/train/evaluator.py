"""The evaluator that picks the checkpoint: each evaluation query's candidates reranked by the model being
trained (`CrossEncoder.predict`, with the prompt scoring uses), scored with the project's own trec_eval
metrics (`pipelines.evaluate.metrics`), not sklearn's nDCG.

The trainer calls it every `eval_steps` on the first worker and shares the result with the others; its
metrics (`eval_ndcg@10`, ...) reach Ray Train with each checkpoint and form the manifest's curve.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from sentence_transformers.base.evaluation.evaluator import BaseEvaluator

from pipelines.evaluate.metrics import query_metrics
from pipelines.train.negatives import DOCUMENT, QUERY
from schemas.qrels import Qrels

KS = (1, 5, 10)
REPORTED = ("ndcg@10", "mrr@10", "recall@10", "map")
PREDICT_BATCH = 32


class RerankEvaluator(BaseEvaluator):
    """Mean metrics over the evaluation queries; `primary_metric` is nDCG@10."""

    def __init__(self, candidates: pa.Table, qrels: Qrels, prompt: str | None):
        super().__init__()
        self.candidates, self.qrels, self.prompt = candidates, qrels, prompt
        self.primary_metric = "ndcg@10"
        self.greater_is_better = True

    def __call__(self, model, output_path: str | None = None, epoch: float = -1, steps: int = -1) -> dict:
        qids = self.candidates.column("query_id").to_pylist()
        dids = self.candidates.column("doc_id").to_pylist()
        return self.metrics(qids, dids, self.scores(model).astype(np.float64))

    def scores(self, model) -> np.ndarray:
        """Every candidate's score, one per row of `candidates`: `CrossEncoder.predict` with the prompt
        scoring uses, as float32 (what a scoring job writes as `score`)."""
        pairs = list(
            zip(
                self.candidates.column(QUERY).to_pylist(),
                self.candidates.column(DOCUMENT).to_pylist(),
                strict=True,
            )
        )
        scores = model.predict(pairs, prompt=self.prompt, batch_size=PREDICT_BATCH, show_progress_bar=False)
        return np.asarray(scores, dtype=np.float32).reshape(-1)

    def metrics(self, qids: list[str], dids: list[str], scores: np.ndarray) -> dict[str, float]:
        by_query: dict[str, list[int]] = {}
        for i, q in enumerate(qids):
            by_query.setdefault(q, []).append(i)
        per_query = []
        for q in self.qrels:  # a query without candidates scores 0, as trec_eval counts it
            rows = by_query.get(q, [])
            per_query.append(
                query_metrics([dids[i] for i in rows], scores[rows], self.qrels[q], KS)
                if rows
                else dict.fromkeys(REPORTED, 0.0)
            )
        return {name: float(np.mean([m[name] for m in per_query])) for name in REPORTED}
