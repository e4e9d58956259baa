"""`python -m jobs.refresh` (or `ray-rerank-refresh`): the nightly retrieve-then-rerank refresh, published
under ROOT/LATEST. Corpus and queries come from Parquet, JSON Lines or CSV, or a BEIR directory (`--beir`).

Runs locally (starts a Ray instance) or under `ray job submit --working-dir . -- python -m jobs.refresh ...`.
"""

from __future__ import annotations

import sys

from jobs.cli import SettingsParser, run_job
from pipelines.refresh.config import RefreshConfig
from schemas.tables import TooManyErrors

GROUPS = {
    "input/output": (
        "corpus",
        "queries",
        "beir",
        "split",
        "qrels",
        "format",
        "columns",
        "keep_columns",
        "output",
        "trec_run",
    ),
    "retrieval": ("retrieve_k", "metric", "retrieve_block_rows", "top_k"),
    "fused scores": ("fuse", "fuse_weight"),
    "run control": (
        "run_id",
        "mode",
        "max_error_rate",
        "rank_on_driver_rows",
        "driver_rows",
        "rows_per_partition",
        "lease_ttl_s",
        "lease_heartbeat_s",
    ),
}
EXAMPLES = (
    "python -m jobs.refresh --corpus corpus.parquet --queries queries.parquet --output nightly/ \\\n"
    "      --embed-model sentence-transformers/all-MiniLM-L6-v2 --rerank-model Qwen/Qwen3-Reranker-0.6B",
    "ray job submit --working-dir . -- python -m jobs.refresh --beir s3://bucket/beir/scifact/ \\\n"
    "      --output s3://bucket/nightly/ --rerank-actors 8 \\\n"
    "      --embed-model sentence-transformers/all-MiniLM-L6-v2 --rerank-model Qwen/Qwen3-Reranker-0.6B",
)


def build_parser() -> SettingsParser:
    return SettingsParser(
        RefreshConfig,
        groups=GROUPS,
        examples=EXAMPLES,
        prog="python -m jobs.refresh",
        description="Embed the corpus (only new or changed documents) and the queries with a SentenceTransformer, "
        "retrieve the exact top-k per query, rerank the candidates with a CrossEncoder (pairs scored on an "
        "earlier night are taken from the score cache), write ROOT/runs/<run_id>/ and, only when the run "
        "succeeds, point ROOT/LATEST at it. With --beir DIR, corpus, queries and judgements come from a BEIR "
        "directory and the night is evaluated against DIR/qrels/<split>.tsv.",
    )


def summary(manifest: dict) -> str:
    n, t = manifest["counts"], manifest["throughput"]
    root = manifest["root"].rstrip("/")
    pairs_s = t.get("pairs_per_s")
    lines = [
        f"LATEST -> {manifest['run_id']} ({root}/runs/{manifest['run_id']}/)"
        if manifest.get("published", True)
        else f"run {manifest['run_id']} ({root}/runs/{manifest['run_id']}/): {manifest['not_published']}",
        f"docs: {n['docs']} ({n['docs_embedded']} embedded, {n['docs_reused']} reused, {n['docs_failed']} failed); "
        f"queries: {n['queries']} ({n['queries_failed']} failed)",
        f"candidates: {n['candidates']}; reranked: {n['scored']} scored, {n['cache_hits']} from the score cache, "
        f"{n['rerank_failed']} errors",
        f"throughput: {pairs_s:.1f} pairs/s" if pairs_s else "throughput: (no pair scored in this process)",
    ]
    timings = dict(manifest.get("timings") or {})
    total = timings.pop("total_s", None)
    if timings:
        score_s = ((manifest.get("rerank") or {}).get("timings") or {}).get("score_s")
        order = [
            f"{name}_s" for name in ("read_inputs", "embed", "retrieve", "rerank", "score_cache", "evaluate")
        ]
        parts = []
        for key in sorted(timings, key=lambda k: order.index(k) if k in order else len(order)):
            scoring = f" (scoring {score_s:.1f} s)" if key == "rerank_s" and score_s else ""
            parts.append(f"{key.removesuffix('_s')} {timings[key]:.1f} s{scoring}")
        lines.append(f"stage timings: {', '.join(parts)}" + (f"; total {total:.1f} s" if total else ""))
    if manifest.get("resumed_stages"):
        lines.append(f"resumed: {', '.join(manifest['resumed_stages'])} finished earlier")
    if manifest.get("evaluation"):
        lines.append(f"evaluation: {manifest['evaluation']['output']}")
    return "\n".join(lines)


def check(cfg: RefreshConfig) -> None:
    """The inputs and the run directory, before a Ray instance is started or joined."""
    from pipelines.refresh.config import refuse_existing_run
    from pipelines.refresh.pipeline import check_inputs
    from pipelines.refresh.publish import RunLayout

    check_inputs(cfg)
    cfg.with_fusion_weight()  # --fuse linear without a weight fails here, before Ray starts
    if cfg.run_id is not None:  # otherwise a new run id is made when the run begins
        refuse_existing_run(cfg, RunLayout(cfg.output, cfg.run_id))


def run(cfg: RefreshConfig, _checked=None) -> str:
    from pipelines.refresh.pipeline import run_refresh
    from pipelines.storage.shared import require_shared

    require_shared(cfg.output)  # a local root on a cluster of several nodes: every node must see it
    manifest = run_refresh(cfg)
    if (manifest["rerank"].get("errors") or {}).get("exceeded"):
        raise TooManyErrors(manifest["not_published"], summary(manifest))
    return summary(manifest)


def main(argv: list[str] | None = None) -> int:
    return run_job(build_parser(), argv, run, check)


if __name__ == "__main__":
    sys.exit(main())
