"""The refresh's manifest.json: what a night read, did, counted and took, written last (`pipelines.refresh.pipeline`)."""

from __future__ import annotations

from dataclasses import asdict

from pipelines.runs.info import library_versions, model_fingerprint
from pipelines.storage import uris
from pipelines.storage.tables import clustered_by_query


def night_manifest(night, *, docs, queries, retrieval, rerank, cached, evaluation) -> dict:
    """The manifest of `night` (a `pipelines.refresh.pipeline` night: its config, layout, inputs, previous run,
    timings and resumed stages) from its stages' results."""
    cfg = night.cfg
    score_s = (rerank.get("timings") or {}).get("score_s")
    clustered = retrieval.get("clustered_by_query")
    if clustered is None:  # a retrieve stage finished by an attempt that did not record it
        clustered = clustered_by_query(night.layout.candidates)
    return {
        "run_id": night.layout.run_id,
        "kind": "refresh",
        "previous_run": night.previous,
        "root": cfg.output,
        "config": asdict(cfg),
        "input_files": {"corpus": night.inputs.corpus_files, "queries": night.inputs.query_files},
        "embedder": {"id": cfg.embedder.model, **model_fingerprint(cfg.embedder.model)},
        "reranker": {"id": cfg.reranker.model, **model_fingerprint(cfg.reranker.model)},
        "counts": {
            "docs": docs["rows"],
            "docs_embedded": docs["embedded"],
            "docs_reused": docs["reused"],
            "docs_failed": docs["failed"],
            "queries": queries["rows"],
            "queries_failed": queries["failed"],
            "candidates": retrieval["candidates"],
            "cache_hits": cached["cache_hits"],
            "scored": cached["scored"],
            "rerank_failed": rerank["counts"]["failed"],
            "ranked_rows": rerank["counts"]["ranked_rows"],
        },
        "rerank": rerank,
        "evaluation": evaluation,
        "timings": night.timings,
        "throughput": {"pairs_per_s": cached["scored"] / score_s if score_s else None},
        "resumed_stages": night.resumed,
        # True only when checked: every query's candidates contiguous, in one file (ranking needs no
        # shuffle to bring a query's rows together).
        "candidates_clustered_by_query": clustered,
        "outputs": {
            "candidates": night.layout.candidates,
            "ranked": uris.join(night.layout.run_dir, "ranked"),
            "errors": uris.join(night.layout.run_dir, "errors"),
            "embeddings": night.layout.embeddings("document"),
        },
        "versions": library_versions(),
    }
