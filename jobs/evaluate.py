"""Evaluate ranked runs against held-out relevance judgements: ``python -m jobs.evaluate`` (or
``ray-rerank-evaluate``). Judgements: Parquet, TREC qrels text, or a BEIR ``qrels/<split>.tsv``.

Example::

    python -m jobs.evaluate --qrels qrels.parquet \\
        --run retrieval=out/run1:candidates --run reranked=out/run1 --output out/eval

A run is a rerank/refresh output folder or a TREC run file (``bm25=bm25.trec``), compared in one report.

Writes metrics.json, report.md, metrics.png and one TREC run file per run under --output; with
--tune-fusion also fusion.json, the weight of ``--fuse linear`` tuned on these (validation) judgements.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from jobs.cli import SettingsParser, run_job
from pipelines.evaluate.pipeline import (
    DEFAULT_KS,
    METRICS_FILE,
    check_output,
    format_summary,
    prepare_evaluation,
    run_evaluation,
)
from pipelines.evaluate.report import PLOT_FILE, REPORT_FILE
from pipelines.evaluate.runs import RunInputError, parse_run_spec
from schemas.settings import setting

RUN_HELP = (
    "a run as NAME=DIR or NAME=FILE, repeatable; the first is the baseline. DIR is a run root holding "
    "ranked/ (ordered by score, or fused_score when it has one) or candidates/ (ordered by retrieval_score), "
    "or a folder of Parquet files; "
    "append :ranked or :candidates to choose, e.g. retrieval=out/run1:candidates. FILE is a TREC run file "
    "('qid Q0 docid rank score tag' lines; .trec, .txt or .run), e.g. bm25=bm25.trec"
)

GROUPS = {"input/output": ("qrels", "runs", "output"), "metrics": ("ks",), "fused scores": ("tune_fusion",)}
EXAMPLES = (
    "python -m jobs.evaluate --qrels qrels.parquet \\\n"
    "      --run retrieval=out/run1:candidates --run reranked=out/run1 --output out/eval",
    "python -m jobs.evaluate --qrels scifact/qrels/test.tsv --run bm25=runs/bm25 --run ce=runs/ce "
    "--output eval/ --k 10,100",
    "python -m jobs.evaluate --qrels qrels.txt --run bm25=bm25.trec --run reranked=out/run1/run.trec "
    "--output eval/",
)
_EPILOG = """outputs: metrics.json, report.md, metrics.png and <name>.trec per run under --output.
metrics: nDCG@k, MRR@k, Recall@k, P@k and MAP exactly as trec_eval computes them (relevant = relevance
>= 1; ties in score ordered by doc id descending, a TREC file's rank field ignored, as trec_eval does;
means over the queries in both the run and the qrels)."""


def _parse_ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected comma-separated integers, e.g. 1,3,5,10,100"
        ) from None
    if any(k < 1 for k in ks) or len(set(ks)) != len(ks):
        raise argparse.ArgumentTypeError(f"{text!r}: cutoffs must be distinct positive integers")
    return ks


@dataclass(frozen=True, kw_only=True)
class EvaluateConfig:
    """Configuration of one evaluation job; every field is one CLI flag."""

    qrels: str = setting(
        help="relevance judgements: Parquet (query_id, doc_id, relevance) file/dir, TREC qrels text, or BEIR "
        "qrels TSV (header line 'query-id corpus-id score'); local path or s3://"
    )
    runs: tuple[str, ...] = setting(flag="run", action="append", metavar="NAME=DIR|FILE", help=RUN_HELP)
    output: str = setting(
        help="folder for metrics.json, report.md, metrics.png and <name>.trec; local path or s3://"
    )
    ks: tuple[int, ...] = setting(
        DEFAULT_KS,
        flag="k",
        parse=_parse_ks,
        metavar="K,K,...",
        help="comma-separated cutoffs for nDCG@k, MRR@k, Recall@k and P@k",
    )
    tune_fusion: bool = setting(
        False,
        help="tune the weight w of --fuse linear on the last --run (ranked output with score and "
        "retrieval_score): w = 0.00, 0.05, ..., 1.00, the best mean nDCG@10 over the judged queries (a tie: "
        "the larger w), written to --output/fusion.json for the model directory. The qrels must be "
        "validation queries, not the test queries you report on",
    )

    def validate(self) -> EvaluateConfig:
        return self

    def named_runs(self) -> dict[str, str]:
        """`NAME=DIR` specs as {name: location}, in order; a name used twice is an error."""
        runs: dict[str, str] = {}
        for spec in self.runs:
            name, location = parse_run_spec(spec)
            if name in runs:
                raise RunInputError(f"--run {spec!r}: the name {name!r} is used twice; give each run its own")
            runs[name] = location
        return runs


def build_parser() -> SettingsParser:
    """One flag per EvaluateConfig field, with the field's help."""
    return SettingsParser(
        EvaluateConfig,
        groups=GROUPS,
        examples=EXAMPLES,
        prog="python -m jobs.evaluate",
        description="Score ranked runs against relevance judgements with trec_eval semantics, compare\n"
        "them with the first run (paired t-test and randomization test) and write a report.",
        epilog=_EPILOG,
    )


def parse_config(argv: list[str] | None = None) -> EvaluateConfig:
    parser = build_parser()
    return parser.config(parser.parse_args(argv))


def _check(cfg: EvaluateConfig):
    plan = prepare_evaluation(cfg.qrels, cfg.named_runs(), cfg.ks, tune_fusion=cfg.tune_fusion)
    check_output(cfg.output)
    return plan


def run(cfg: EvaluateConfig, plan) -> str:
    metrics = run_evaluation(plan, cfg.output)
    out = cfg.output.rstrip("/")
    trec = [f"{out}/{r['trec_file']}" for r in metrics["runs"].values() if r["trec_file"]]
    return "\n".join(
        [
            format_summary(metrics),
            f"metrics: {out}/{METRICS_FILE}",
            f"report:  {out}/{REPORT_FILE}",
            f"plot:    {out}/{PLOT_FILE}",
            f"TREC run files: {', '.join(trec)}",
            *([f"fusion:  {out}/{metrics['fusion']['file']}"] if metrics.get("fusion") else []),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    return run_job(build_parser(), argv, run, _check)


if __name__ == "__main__":
    sys.exit(main())
