"""Evaluate ranked runs against held-out relevance judgements: ``python -m jobs.evaluate``.

Example::

    python -m jobs.evaluate --qrels qrels.parquet \\
        --run retrieval=out/run1:candidates --run reranked=out/run1 --output out/eval

Writes metrics.json, report.md, metrics.png and one TREC run file per run under --output.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import MISSING, dataclass, field, fields

from jobs.ray_session import connect
from pipelines.evaluate import (
    DEFAULT_KS,
    METRICS_FILE,
    RunInputError,
    check_output,
    format_summary,
    parse_run_spec,
    prepare_evaluation,
    run_evaluation,
)
from pipelines.evaluate_report import PLOT_FILE, REPORT_FILE

RUN_HELP = (
    "a run as NAME=DIR, repeatable; the first is the baseline. DIR is a run root holding ranked/ (ordered "
    "by score) or candidates/ (ordered by retrieval_score), or a folder of Parquet files; append :ranked "
    "or :candidates to choose, e.g. bm25=out/run1:candidates"
)

_EPILOG = """example:
  python -m jobs.evaluate --qrels qrels.parquet \\
      --run retrieval=out/run1:candidates --run reranked=out/run1 --output out/eval

outputs: metrics.json, report.md, metrics.png and <name>.trec per run under --output.
metrics: nDCG@k, MRR@k, Recall@k, P@k and MAP exactly as trec_eval computes them (relevant = relevance
>= 1; ties in score ordered by doc id descending; means over the queries in both the run and the qrels)."""


@dataclass(frozen=True)
class EvaluateConfig:
    """Configuration of one evaluation job; every field is one CLI flag."""

    qrels: str = field(
        metadata={
            "help": "relevance judgements: Parquet (query_id, doc_id, relevance) "
            "file/dir or TREC qrels text; local path or s3://"
        }
    )
    runs: tuple[str, ...] = field(metadata={"flag": "--run", "help": RUN_HELP})
    output: str = field(
        metadata={
            "help": "folder for metrics.json, report.md, metrics.png and <name>.trec; local path or s3://"
        }
    )
    ks: tuple[int, ...] = field(
        default=DEFAULT_KS,
        metadata={
            "flag": "--k",
            "help": "comma-separated cutoffs for nDCG@k, MRR@k, Recall@k and P@k (default: 1,3,5,10,100)",
        },
    )
    ray_address: str | None = field(
        default=None,
        metadata={
            "help": "Ray cluster address; default: RAY_ADDRESS (set by `ray job submit`) or a new "
            "local instance"
        },
    )


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


def build_parser() -> argparse.ArgumentParser:
    """One flag per EvaluateConfig field, with the field's help."""
    parser = argparse.ArgumentParser(
        prog="python -m jobs.evaluate",
        description="Score ranked runs against relevance judgements with trec_eval semantics, compare\n"
        "them with the first run (paired t-test and randomization test) and write a report.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for f in fields(EvaluateConfig):
        flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
        kwargs: dict = {"dest": f.name, "help": f.metadata["help"]}
        if f.name == "runs":
            kwargs.update(action="append", required=True, metavar="NAME=DIR")
        elif f.name == "ks":
            kwargs.update(type=_parse_ks, default=f.default, metavar="K,K,...")
        elif f.default is MISSING:
            kwargs.update(required=True)
        else:
            kwargs.update(default=f.default)
        parser.add_argument(flag, **kwargs)
    return parser


def parse_config(argv: list[str] | None = None) -> EvaluateConfig:
    args = build_parser().parse_args(argv)
    return EvaluateConfig(
        qrels=args.qrels,
        runs=tuple(args.runs),
        output=args.output,
        ks=tuple(args.ks),
        ray_address=args.ray_address,
    )


def main(argv: list[str] | None = None) -> int:
    config = parse_config(argv)
    try:
        runs: dict[str, str] = {}
        for spec in config.runs:
            name, location = parse_run_spec(spec)
            if name in runs:
                raise RunInputError(f"--run {spec!r}: the name {name!r} is used twice; give each run its own")
            runs[name] = location
        plan = prepare_evaluation(config.qrels, runs, config.ks)
        check_output(config.output)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    connect(config.ray_address)
    try:
        metrics = run_evaluation(plan, config.output)
    except RunInputError as exc:  # bad rows only visible while scanning the run (duplicates, nulls, NaN)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    out = config.output.rstrip("/")
    print(format_summary(metrics))
    print(f"metrics: {out}/{METRICS_FILE}")
    print(f"report:  {out}/{REPORT_FILE}")
    print(f"plot:    {out}/{PLOT_FILE}")
    trec = [f"{out}/{r['trec_file']}" for r in metrics["runs"].values() if r["trec_file"]]
    print(f"TREC run files: {', '.join(trec)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
