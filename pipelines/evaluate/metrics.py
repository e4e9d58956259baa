"""Per-query ranking metrics with the exact semantics of trec_eval, and paired significance tests.

Everything here is pure (no Ray, no I/O) so it can be checked against pytrec_eval in unit tests.

Semantics (trec_eval 9.x, which pytrec_eval wraps):

- **Order.** A run is ordered by score descending; exact score ties are broken by document id in
  *descending* byte order (trec_eval's ``strcmp(b, a)``). A run's own ``rank`` column is ignored, as
  trec_eval ignores it, so a file written with ties broken by ``candidate_id`` ascending is still scored
  exactly as trec_eval scores it.
- **Relevant** means ``relevance >= relevance_level`` (default 1). Unjudged documents are not relevant.
- ``ndcg@k`` (trec_eval ``ndcg_cut.k``): DCG = sum over the first k retrieved of ``gain / log2(i + 2)``
  (0-based i) with *linear* gain = the judged relevance value (values <= 0 gain nothing); the ideal DCG
  sorts *all* positive judgements of the query (retrieved or not) descending and cuts at k; 0 when the
  ideal DCG is 0.
- ``mrr@k``: trec_eval ``recip_rank`` on the run cut at k: 1 / position of the first relevant document
  within the first k, else 0.
- ``recall@k``: relevant documents within the first k / all relevant judgements; 0 with none.
- ``p@k``: relevant documents within the first k / k (a run shorter than k is not rescaled).
- ``map``: trec_eval ``map`` (no cutoff): sum of precision at each retrieved relevant document / all
  relevant judgements; 0 with none.

Queries are averaged by the caller over run ∩ qrels (trec_eval's default), see ``pipelines.evaluate.pipeline``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats

RELEVANCE_LEVEL = 1
RANDOMIZATION_SAMPLES = 10_000


def metric_names(ks: Sequence[int]) -> list[str]:
    """The metric keys computed for cutoffs `ks`, in report order: ndcg@k, mrr@k, recall@k, p@k, map."""
    names = [f"{m}@{k}" for m in ("ndcg", "mrr", "recall", "p") for k in ks]
    return [*names, "map"]


def trec_order(doc_ids: Sequence[str], scores: Sequence[float] | np.ndarray) -> np.ndarray:
    """Positions of `doc_ids` in trec_eval order: score descending, then doc id descending (strcmp).

    Python/NumPy compare unicode strings by code point, which is the order strcmp gives their UTF-8 bytes.
    """
    ids = np.asarray(doc_ids, dtype=object).astype(str)
    score = np.asarray(scores, dtype=np.float64)
    # Rank each id in ascending order, then sort on (-score, -id rank): lexsort's last key is primary.
    id_rank = np.empty(len(ids), dtype=np.int64)
    id_rank[np.argsort(ids, kind="stable")] = np.arange(len(ids))
    return np.lexsort((-id_rank, -score))


def query_metrics(
    doc_ids: Sequence[str],
    scores: Sequence[float] | np.ndarray,
    judgements: Mapping[str, int],
    ks: Sequence[int],
    relevance_level: int = RELEVANCE_LEVEL,
) -> dict[str, float]:
    """All metrics of one query: its retrieved `doc_ids` with `scores` (any order) against `judgements`.

    `judgements` maps doc id to relevance for this query (may be empty: every metric is then 0, as in
    trec_eval for a judged query without relevant documents). Doc ids must be unique within the query.
    """
    order = trec_order(doc_ids, scores)
    ranked = [doc_ids[i] for i in order]
    rels = np.array([judgements.get(d, 0) for d in ranked], dtype=np.float64)
    return metrics_from_relevances(rels, list(judgements.values()), ks, relevance_level)


def metrics_from_relevances(
    rels: np.ndarray, judged: Sequence[int], ks: Sequence[int], relevance_level: int = RELEVANCE_LEVEL
) -> dict[str, float]:
    """Metrics from the relevance of each retrieved document in trec order and all judged values."""
    is_rel = rels >= relevance_level
    num_rel = sum(1 for r in judged if r >= relevance_level)
    ideal = sorted((r for r in judged if r > 0), reverse=True)
    out: dict[str, float] = {}
    for k in ks:
        out[f"ndcg@{k}"] = _ndcg(rels[:k], ideal[:k])
    for k in ks:
        hits = np.flatnonzero(is_rel[:k])
        out[f"mrr@{k}"] = 1.0 / (hits[0] + 1) if hits.size else 0.0
    for k in ks:
        found = int(is_rel[:k].sum())
        out[f"recall@{k}"] = found / num_rel if num_rel else 0.0
    for k in ks:
        out[f"p@{k}"] = int(is_rel[:k].sum()) / k
    out["map"] = _average_precision(is_rel, num_rel)
    return out


def _dcg(gains: Sequence[float]) -> float:
    # Summed left to right like trec_eval, so results agree to the last bits.
    total = 0.0
    for i, gain in enumerate(gains):
        if gain > 0:
            total += gain / math.log2(i + 2)
    return total


def _ndcg(gains: np.ndarray, ideal_gains: Sequence[int]) -> float:
    ideal = _dcg([float(g) for g in ideal_gains])
    return _dcg(gains.tolist()) / ideal if ideal > 0 else 0.0


def _average_precision(is_rel: np.ndarray, num_rel: int) -> float:
    if not num_rel:
        return 0.0
    total = 0.0
    for found, i in enumerate(np.flatnonzero(is_rel).tolist(), start=1):
        total += found / (i + 1)
    return total / num_rel


def paired_t_test(baseline: np.ndarray, run: np.ndarray) -> float | None:
    """Two-sided paired t-test p-value of `run` vs `baseline` (same queries, same order).

    None with fewer than two queries. When every difference is the same the t statistic is undefined
    (zero variance): p is 1.0 if the difference is 0, else 0.0 (the limit of a constant shift).
    """
    diff = np.asarray(run, dtype=np.float64) - np.asarray(baseline, dtype=np.float64)
    if diff.size < 2:
        return None
    if np.ptp(diff) <= 1e-12:  # rounding noise of equal differences must not look like variance
        return 1.0 if abs(diff[0]) <= 1e-12 else 0.0
    return float(stats.ttest_rel(run, baseline).pvalue)


def randomization_test(
    baseline: np.ndarray, run: np.ndarray, samples: int = RANDOMIZATION_SAMPLES, seed: int = 0
) -> float | None:
    """Two-sided paired randomization (sign-flip) test p-value of `run` vs `baseline`; None if empty."""
    diff = np.asarray(run, dtype=np.float64) - np.asarray(baseline, dtype=np.float64)
    if diff.size == 0:
        return None
    return float(randomization_p_values(diff[:, None], samples, seed)[0])


def randomization_p_values(
    diffs: np.ndarray, samples: int = RANDOMIZATION_SAMPLES, seed: int = 0
) -> np.ndarray:
    """Randomization-test p-values of the mean of each column of `diffs` (queries x metrics).

    Each sample swaps the two runs' values on a random subset of queries (flips the sign of their
    differences), the same subset for every metric; p = (samples at least as extreme + 1) / (samples + 1),
    so it is never 0. The seed is fixed so reports are reproducible. `diffs` must have at least one row.
    """
    diffs = np.asarray(diffs, dtype=np.float64)
    n = diffs.shape[0]
    observed = np.abs(diffs.mean(axis=0))
    rng = np.random.default_rng(seed)
    extreme = np.zeros(diffs.shape[1], dtype=np.int64)
    chunk = max(1, 4_000_000 // n)  # bound memory to a few million signs at a time
    for start in range(0, samples, chunk):
        size = min(chunk, samples - start)
        signs = rng.integers(0, 2, size=(size, n)).astype(np.float64) * 2 - 1
        means = np.abs(signs @ diffs) / n
        extreme += np.count_nonzero(means >= observed - 1e-12, axis=0)
    return (extreme + 1) / (samples + 1)
