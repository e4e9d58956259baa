"""`python -m jobs.rerank` (or `ray-rerank`): rerank query/candidate pairs (Parquet, JSON Lines or CSV)
into ranked Parquet tables.

Runs locally (starts a Ray instance) or under `ray job submit --working-dir . -- python -m jobs.rerank ...`.
"""

from __future__ import annotations

import sys

from jobs.cli import SettingsParser, run_job
from pipelines.rerank.config import RerankConfig
from schemas.tables import TooManyErrors

GROUPS = {
    "input/output": ("pairs", "output", "format", "columns", "keep_columns", "top_k", "trec_run"),
    "first-stage run input": ("run", "corpus", "queries", "beir", "split", "depth"),
    "fused scores": ("fuse", "fuse_weight"),
    "run control": (
        "run_id",
        "mode",
        "max_error_rate",
        "rank_on_driver_rows",
        "lease_ttl_s",
        "lease_heartbeat_s",
    ),
}
EXAMPLES = (
    "python -m jobs.rerank --pairs pairs.parquet --model Qwen/Qwen3-Reranker-0.6B --output out/",
    "python -m jobs.rerank --run bm25.trec --corpus corpus.jsonl --queries queries.jsonl --depth 100 \\\n"
    "      --model Qwen/Qwen3-Reranker-0.6B --output out/ --run-id bm25-rerank --trec-run",
    "ray job submit --working-dir . -- python -m jobs.rerank --pairs s3://bucket/pairs/ \\\n"
    "      --model Qwen/Qwen3-Reranker-0.6B --output s3://bucket/ranked/ --actors 8 --top-k 100",
)


def build_parser() -> SettingsParser:
    return SettingsParser(
        RerankConfig,
        groups=GROUPS,
        examples=EXAMPLES,
        prog="python -m jobs.rerank",
        description="Score query/candidate pairs (Parquet, JSON Lines or CSV) with a CrossEncoder (Transformer + "
        "LogitScore) on a Ray actor pool and write ranked Parquet tables, an errors table and manifest.json "
        "under --output.",
    )


def summary(manifest: dict, output: str) -> str:
    counts, tokens, tp = manifest["counts"], manifest["tokens"], manifest["throughput"]
    eff = tokens["padding_efficiency"]
    base = tokens["unsorted_fixed_batches_padding_efficiency"]
    pairs_s = tp["pairs_per_s"]
    return (
        "\n".join(
            [
                f"run {manifest['run_id']}: {counts['pairs_in']} pairs, {counts['scored']} scored, "
                f"{counts['failed']} errors, {counts['queries']} queries",
                f"resumed: {counts['pairs_resumed']} pairs from the checkpoint, "
                f"{counts['pairs_scored_this_run']} scored by this attempt"
                if counts.get("pairs_resumed")
                else "",
                f"ranked tables: {output.rstrip('/')}/ranked/   errors: {output.rstrip('/')}/errors/",
                f"throughput: {pairs_s:.1f} pairs/s"
                if pairs_s
                else "throughput: (scoring resumed from checkpoint)",
                f"padding efficiency: {eff:.3f} (unsorted fixed batches of 32: {base:.3f})"
                if eff and base
                else "",
            ]
        )
        .replace("\n\n", "\n")
        .strip()
    )


def check(cfg: RerankConfig) -> None:
    """The pairs and the output, before a Ray instance is started or joined."""
    from pipelines.rerank.inputs import plan_inputs
    from pipelines.rerank.run import held_run

    plan_inputs(cfg)  # with --fuse, the pairs' retrieval column too
    cfg.with_fusion_weight()  # --fuse linear without a weight fails here, before Ray starts
    held_run(cfg)  # refuses an output this request may not have


def run(cfg: RerankConfig, _checked=None) -> str:
    from pipelines.rerank.run import run_rerank

    manifest = run_rerank(cfg)
    text = summary(manifest, cfg.output)
    errors = manifest.get("errors", {})
    if errors.get("exceeded"):
        raise TooManyErrors(
            f"{manifest['counts']['failed']} of {manifest['counts']['pairs_in']} pairs failed "
            f"({errors['error_rate']:.1%}, over --max-error-rate {errors['max_error_rate']:g}); "
            f"see {cfg.output.rstrip('/')}/errors/",
            text,
        )
    return text


def main(argv: list[str] | None = None) -> int:
    return run_job(build_parser(), argv, run, check)


if __name__ == "__main__":
    sys.exit(main())
