"""`python -m jobs.rerank`: rerank Parquet shards of query/candidate pairs into ranked Parquet tables.

Runs locally (starts a Ray instance) or under `ray job submit --working-dir . -- python -m jobs.rerank ...`.
"""

from __future__ import annotations

import sys

from jobs.cli import SettingsParser, run_job
from pipelines.rerank import RerankConfig


def build_parser() -> SettingsParser:
    return SettingsParser(
        RerankConfig,
        prog="python -m jobs.rerank",
        description="Score query/candidate pairs with a CrossEncoder (Transformer + LogitScore) on a Ray actor "
        "pool and write ranked Parquet tables, an errors table and manifest.json under --output.",
    )


def summary(manifest: dict, output: str) -> str:
    counts, tokens, tp = manifest["counts"], manifest["tokens"], manifest["throughput"]
    eff = tokens["padding_efficiency"]
    base = tokens["unsorted_fixed_batches_padding_efficiency"]
    pairs_s = tp["pairs_per_s"]
    return "\n".join(
        [
            f"run {manifest['run_id']}: {counts['pairs_in']} pairs, {counts['scored']} scored, "
            f"{counts['failed']} errors, {counts['queries']} queries",
            f"ranked tables: {output.rstrip('/')}/ranked/   errors: {output.rstrip('/')}/errors/",
            f"throughput: {pairs_s:.1f} pairs/s"
            if pairs_s
            else "throughput: (scoring resumed from checkpoint)",
            f"padding efficiency: {eff:.3f} (unsorted fixed batches of 32: {base:.3f})"
            if eff and base
            else "",
        ]
    ).strip()


def check(cfg: RerankConfig) -> None:
    from pipelines.rerank import check_inputs

    check_inputs(cfg.pairs)


def run(cfg: RerankConfig, _checked=None) -> str:
    from pipelines.rerank import run_rerank

    return summary(run_rerank(cfg), cfg.output)


def main(argv: list[str] | None = None) -> int:
    return run_job(build_parser(), argv, run, check)


if __name__ == "__main__":
    sys.exit(main())
