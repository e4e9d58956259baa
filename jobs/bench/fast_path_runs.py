"""The exact fast paths timed side by side with the default path, in-process, on a few rows each; and the
small statistics the benchmark report shares."""

from __future__ import annotations

import numpy as np

from actors.model_spec import resolve_device_and_dtype
from actors.reranker.worker import RerankWorker
from jobs.bench.data import SHORT_DOCUMENTS, skewed_pairs, text_pairs
from schemas import columns as c


def fast_path_variants(cfg, work) -> dict:
    """name -> (in-process worker, table). The default path on the same rows is each one's baseline."""
    n = min(cfg.fast_path_pairs, work.table.num_rows)
    subset = work.table.slice(0, n)
    short = skewed_pairs(n, cfg.per_query, SHORT_DOCUMENTS, cfg.seed + 1)
    options = {"default": {}, "hidden": {"score_path": "hidden"}, "prefix_reuse": {"prefix_reuse": True}}
    _, dtype = resolve_device_and_dtype(cfg.spec())
    if str(dtype) != "torch.float32":
        options["fp32_head"] = {"fp32_head": True}
        options["hidden+fp32_head"] = {"score_path": "hidden", "fp32_head": True}
    variants = {}
    for name, fast in options.items():
        base = dict(score_path="logit", fp32_head=False, prefix_reuse=False)
        variants[name] = (RerankWorker(cfg.spec(**{**base, **fast})).load(), subset)
    variants["default@short"] = (variants["default"][0], short)
    variants["prefix_reuse@short"] = (variants["prefix_reuse"][0], short)
    return variants


def median(values) -> float:
    return float(np.median(np.asarray(values, dtype=np.float64)))


def ties(scores: np.ndarray, query_ids: list[str]) -> int:
    """Pairs whose score exactly equals another candidate's of the same query."""
    seen: dict = {}
    for q, s in zip(query_ids, scores.tolist(), strict=True):
        seen[(q, s)] = seen.get((q, s), 0) + 1
    return int(sum(n for n in seen.values() if n > 1))


def fast_path_report(runs: dict, variants: dict, plain, prompt) -> dict:
    """Per variant: median seconds, speed-up over the default path on the same rows, parity and ties."""
    out: dict = {}
    references: dict = {}
    for name, (_, table) in variants.items():
        key = id(table)
        if key not in references:
            pairs = text_pairs(table)
            references[key] = np.asarray(plain.predict(pairs, prompt=prompt), dtype=np.float32)
        seconds = median([t.seconds for t in runs[name]])
        baseline = "default@short" if name.endswith("@short") else "default"
        base_seconds = median([t.seconds for t in runs[baseline]])
        cpu, base_cpu = (median([t.cpu_seconds for t in runs[k]]) for k in (name, baseline))
        scores = runs[name][0].scores
        out[name] = {
            "pairs": table.num_rows,
            "seconds_median": seconds,
            "pairs_per_s": table.num_rows / seconds,
            "speedup_vs_default": base_seconds / seconds,
            "cpu_seconds_rounds": [t.cpu_seconds for t in runs[name]],
            "cpu_speedup_vs_default": base_cpu / cpu,
            "max_abs_diff_vs_predict": float(
                max(np.nanmax(np.abs(t.scores - references[key])) for t in runs[name])
            ),
            "ties": ties(scores, table.column(c.QUERY_ID).to_pylist()),
            "mean_tokens_per_pair": runs[name][0].extra["real_tokens"] / table.num_rows,
        }
    return out
