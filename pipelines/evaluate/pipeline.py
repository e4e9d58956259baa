"""Evaluate ranked runs against relevance judgements on Ray, compare them, and write a report.

Stages: resolve each run (driver, schema only) ─► read_parquet per run, tagged with the run name ─► union
─► groupby(run, query_id).map_groups: per-query metrics and TREC run lines on workers, with the qrels
broadcast once through the object store ─► stream the per-query rows to the driver (one small row per run
and query; the TREC lines go straight to ``<name>.trec``) ─► means, paired comparisons against the first
run ─► report.md, metrics.png, and metrics.json last (its presence means the evaluation is complete).
Runs of few rows in all (`driver_rows`) skip the cluster round trip: the same per-query function
(`pipelines.evaluate.query`) runs over the same groups in the driver.

A run is addressed as ``DIR`` or ``DIR:ranked`` / ``DIR:candidates``:

- ``ranked``: reranker output, ordered by ``score`` (``fused_score`` when the run fused scores, as its
  ``rank`` does); ``DIR`` is the run root (holding ``ranked/``) or the folder of Parquet files itself.
- ``candidates``: a refresh run's retrieval candidates, ordered by ``retrieval_score``; ``DIR`` is the run
  root (holding ``candidates/``) or the folder itself.
- With no suffix, ``DIR/ranked`` wins over ``DIR/candidates``; a bare folder is ``ranked`` when its files
  have ``score``, else ``candidates`` when they have ``retrieval_score``.
- ``FILE``, a TREC run file (``qid Q0 docid rank score tag``; .trec, .txt or .run, or any file that is not
  Parquet whose lines have those six fields): a first-stage run from another tool (BM25, say), or the
  ``run.trec`` of ``jobs.rerank --trec-run``; ordered by its score column, read on the workers.

Metric semantics are trec_eval's (see ``pipelines.evaluate.metrics``): the run's ``rank`` column is ignored and
ties in score are ordered by doc id descending. Means are over the queries in both the run and the qrels
(trec_eval's default); qrels queries missing from a run and run queries without judgements are counted
and reported, not averaged. Comparisons pair each run with the first (baseline) run on the queries both
were evaluated on.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray

from pipelines.evaluate import report
from pipelines.evaluate.metrics import RELEVANCE_LEVEL, metric_names, paired_t_test, randomization_p_values
from pipelines.evaluate.query import (
    JUDGED,
    RUN,
    TREC_BAD_ID,
    TREC_LINES,
    evaluate_query_group,
    per_query_on_driver,
    tag_run,
)
from pipelines.evaluate.runs import (
    MIN_TREC_LINE_BYTES,
    RunInputError,
    RunSource,
    resolve_run,
    trec_lines_batch,
)
from pipelines.evaluate.tune import check_tunable, fusion_document, read_rows, tune_weight
from pipelines.rerank.fuse import FUSION_FILE
from schemas.columns import CANDIDATE_ID, QUERY_ID
from schemas.qrels import Qrels, qrels_stats, read_qrels, resolve_filesystem

DEFAULT_KS = (1, 3, 5, 10, 100)
METRICS_FILE = "metrics.json"
SHUFFLE_PARTITION_BYTES = 64 * 1024 * 1024  # of input Parquet per groupby partition
MAX_SHUFFLE_PARTITIONS = 200


@dataclass(frozen=True)
class EvaluationPlan:
    """Validated inputs of an evaluation: built before any cluster work, so bad input fails in a second."""

    qrels_path: str
    qrels: Qrels
    runs: tuple[RunSource, ...]
    ks: tuple[int, ...]
    tune: RunSource | None = None  # --tune-fusion: the run the linear fusion weight is tuned on


@dataclass
class RunResult:
    """Per-query metrics of one run, as column arrays aligned with `query_ids`."""

    source: RunSource
    query_ids: list[str]
    values: dict[str, np.ndarray]
    not_in_qrels: int
    trec_file: str | None
    trec_error: str | None


def prepare_evaluation(
    qrels_path: str, runs: dict[str, str], ks: list[int] | tuple[int, ...], tune_fusion: bool = False
) -> EvaluationPlan:
    """Read the qrels and resolve every run; raises a ValueError with a one-line message on bad input.
    `tune_fusion`: also tune the linear fusion weight on the last run (`pipelines.evaluate.tune`)."""
    if not runs:
        raise RunInputError("no run to evaluate; pass at least one NAME=DIR")
    if not ks or any(not isinstance(k, int) or k < 1 for k in ks) or len(set(ks)) != len(ks):
        raise RunInputError(f"cutoffs {list(ks)}: expected distinct positive integers, e.g. 1,3,5,10,100")
    qrels = read_qrels(qrels_path)
    sources = tuple(resolve_run(name, location) for name, location in runs.items())
    tune = check_tunable(sources[-1]) if tune_fusion else None
    return EvaluationPlan(qrels_path=qrels_path, qrels=qrels, runs=sources, ks=tuple(sorted(ks)), tune=tune)


def evaluate_runs(
    qrels_path: str,
    runs: dict[str, str],
    output: str,
    ks: list[int] | tuple[int, ...] = DEFAULT_KS,
    driver_rows: int = 0,
) -> dict:
    """Evaluate `runs` (name -> DIR[:kind], the first is the baseline) against the qrels at `qrels_path`.

    Writes metrics.json, report.md, metrics.png and ``<name>.trec`` per run under `output` (local or
    s3://) and returns the metrics.json content. Ray must already be initialised. Runs of at most
    `driver_rows` rows in all are evaluated in this process (the same per-query function, no shuffle).
    """
    return run_evaluation(prepare_evaluation(qrels_path, runs, ks), output, driver_rows)


def check_output(output: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and path of the output folder; fails when `output` is an existing file."""
    fs, out_root = resolve_filesystem(output, "output")
    if fs.get_file_info(out_root).type == pafs.FileType.File:
        raise RunInputError(f"output {output}: is a file; pass a folder for metrics.json and report.md")
    return fs, out_root


def run_evaluation(plan: EvaluationPlan, output: str, driver_rows: int = 0) -> dict:
    """Run a validated plan on the cluster (on the driver when its runs hold at most `driver_rows` rows)
    and write every output; metrics.json is written last."""
    fs, out_root = check_output(output)
    fs.create_dir(out_root, recursive=True)
    stale = f"{out_root}/{METRICS_FILE}"
    if fs.get_file_info(stale).type == pafs.FileType.File:
        fs.delete_file(stale)  # an old metrics.json must not vouch for outputs this run may not finish
    results = _evaluate(plan, fs, out_root, driver_rows)
    metrics = _metrics_document(plan, results)
    if plan.tune is not None:  # fusion.json goes into this evaluation's own folder, never into an input
        fusion = fusion_document(
            tune_weight(read_rows(plan.tune), plan.qrels, plan.tune.name), plan.tune, plan.qrels_path
        )
        _write_bytes(fs, f"{out_root}/{FUSION_FILE}", json.dumps(fusion, indent=1).encode())
        metrics["fusion"] = {"file": FUSION_FILE, "run": plan.tune.name, **fusion}
    _write_bytes(fs, f"{out_root}/{report.REPORT_FILE}", report.render_markdown(metrics).encode())
    _write_bytes(fs, f"{out_root}/{report.PLOT_FILE}", report.render_plot(metrics))
    _write_bytes(fs, f"{out_root}/{METRICS_FILE}", json.dumps(metrics, indent=1).encode())
    return metrics


def format_summary(metrics: dict) -> str:
    """A few printable lines: the verdict and each run's headline means (for the demo and job logs)."""
    return report.render_summary(metrics)


def _evaluate(plan: EvaluationPlan, fs: pafs.FileSystem, out_root: str, driver_rows: int) -> list[RunResult]:
    """All runs in one Ray Data execution; the driver streams back one small row per (run, query). Runs
    of at most `driver_rows` rows in all: the same rows, computed here."""
    if _run_rows(plan.runs) <= driver_rows:
        per_query = per_query_on_driver(plan.runs, plan.qrels, plan.ks)
    else:
        dataset = _per_query_dataset(plan.runs, ray.put(plan.qrels), plan.ks)
        per_query = dataset.iter_batches(batch_format="pyarrow", batch_size=None)
    results = {
        s.name: _Collector(s, metric_names(plan.ks), fs, f"{out_root}/{s.name}.trec") for s in plan.runs
    }
    try:
        with contextlib.ExitStack() as stack:
            for collector in results.values():
                collector.stream = stack.enter_context(fs.open_output_stream(collector.trec_path))
            for batch in per_query:
                for name in pc.unique(batch[RUN]).to_pylist():
                    results[name].add(batch.filter(pc.equal(batch[RUN], name)))
    except BaseException as exc:
        for collector in results.values():
            if fs.get_file_info(collector.trec_path).type == pafs.FileType.File:
                fs.delete_file(collector.trec_path)  # never leave a partial run file behind
        if isinstance(exc, ray.exceptions.RayTaskError) and isinstance(exc.cause, RunInputError):
            # Bad rows found on a worker: surface the one-line reason (the traceback is in the worker log).
            raise RunInputError(str(exc.cause)) from None
        raise
    return [collector.finish(plan.qrels) for collector in results.values()]


def _run_rows(sources: tuple[RunSource, ...]) -> int:
    """Rows of every run, from the Parquet footers (a TREC run file: at most one line per 12 bytes)."""
    return sum(
        s.num_bytes // MIN_TREC_LINE_BYTES
        if s.kind == "trec"
        else pq.read_metadata(f, filesystem=s.filesystem).num_rows
        for s in sources
        for f in s.files
    )


def _per_query_dataset(
    sources: tuple[RunSource, ...], qrels_ref: ray.ObjectRef, ks: tuple[int, ...]
) -> ray.data.Dataset:
    """One row per (run, query): its metrics (null when unjudged) and its TREC run lines."""
    parts = [
        _read_run(s).map_batches(
            tag_run, batch_format="pyarrow", fn_kwargs={"run_name": s.name, "score_column": s.score_column}
        )
        for s in sources
    ]
    ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    # Size the hash shuffle to the data: Ray's default of 200 partitions makes small runs crawl.
    num_bytes = sum(s.num_bytes for s in sources)
    partitions = min(MAX_SHUFFLE_PARTITIONS, max(1, math.ceil(num_bytes / SHUFFLE_PARTITION_BYTES)))
    return ds.groupby([RUN, QUERY_ID], num_partitions=partitions).map_groups(
        evaluate_query_group,
        batch_format="pyarrow",
        fn_kwargs={
            "qrels_ref": qrels_ref,
            "ks": list(ks),
            "score_columns": {s.name: s.score_column for s in sources},
        },
    )


def _read_run(s: RunSource) -> ray.data.Dataset:
    """A run's `query_id`, `candidate_id` and score rows: Parquet columns, or TREC lines parsed on workers."""
    if s.kind == "trec":
        return ray.data.read_text(list(s.files), filesystem=s.filesystem).map_batches(
            trec_lines_batch, batch_format="pyarrow", fn_kwargs={"name": s.name}
        )
    columns = [QUERY_ID, CANDIDATE_ID, s.score_column]
    return ray.data.read_parquet(list(s.files), filesystem=s.filesystem, columns=columns)


class _Collector:
    """Driver-side accumulator of one run: TREC lines to its file, metric values into arrays."""

    def __init__(self, source: RunSource, names: list[str], fs: pafs.FileSystem, trec_path: str) -> None:
        self.source, self.names, self.fs, self.trec_path = source, names, fs, trec_path
        self.stream: Any = None
        self.query_ids: list[str] = []
        self.columns: dict[str, list[np.ndarray]] = {m: [] for m in names}
        self.not_in_qrels = 0
        self.trec_error: str | None = None

    def add(self, rows: pa.Table) -> None:
        bad = rows[TREC_BAD_ID].drop_null()
        if self.trec_error is None and len(bad):
            self.trec_error = f"id {bad[0].as_py()!r} contains whitespace, which a TREC run file cannot hold"
        if self.trec_error is None:
            self.stream.write("".join(rows[TREC_LINES].to_pylist()).encode())
        judged = rows.filter(rows[JUDGED])
        self.not_in_qrels += rows.num_rows - judged.num_rows
        self.query_ids.extend(judged[QUERY_ID].to_pylist())
        for m in self.names:
            self.columns[m].append(judged[m].to_numpy(zero_copy_only=False))

    def finish(self, qrels: Qrels) -> RunResult:
        if self.trec_error is not None:
            self.fs.delete_file(self.trec_path)
        if not self.query_ids:
            raise RunInputError(
                f"run {self.source.name!r}: none of its queries is in the qrels (qrels ids look like "
                f"{next(iter(qrels))!r}); check that both use the same query_id"
            )
        return RunResult(
            source=self.source,
            query_ids=self.query_ids,
            values={m: np.concatenate(parts) for m, parts in self.columns.items()},
            not_in_qrels=self.not_in_qrels,
            trec_file=None if self.trec_error else self.trec_path.rsplit("/", 1)[-1],
            trec_error=self.trec_error,
        )


def _metrics_document(plan: EvaluationPlan, results: list[RunResult]) -> dict[str, Any]:
    names = metric_names(plan.ks)
    runs = {}
    for r in results:
        evaluated = set(r.query_ids)
        runs[r.source.name] = {
            "source": r.source.location,
            "kind": r.source.kind,
            "score_column": r.source.score_column,
            "queries_evaluated": len(r.query_ids),
            "queries_missing_from_run": sum(1 for q in plan.qrels if q not in evaluated),
            "queries_not_in_qrels": r.not_in_qrels,
            "trec_file": r.trec_file,
            "trec_file_error": r.trec_error,
            "mean": {m: math.fsum(r.values[m].tolist()) / len(r.query_ids) for m in names},
            "per_query": {q: {m: float(r.values[m][i]) for m in names} for i, q in enumerate(r.query_ids)},
        }
    baseline = results[0]
    return {
        "qrels": {"path": plan.qrels_path, **qrels_stats(plan.qrels)},
        "ks": list(plan.ks),
        "metrics": names,
        "baseline": baseline.source.name,
        "semantics": {
            "tool": "trec_eval (ndcg_cut, recip_rank on the run cut at k, recall, P, map)",
            "relevance_level": RELEVANCE_LEVEL,
            "gain": "linear (the judged relevance value)",
            "tie_order": "score descending, then doc id descending (trec_eval); the rank column is ignored",
            "averaging": "mean over queries in both the run and the qrels (trec_eval default)",
            "comparison": "paired over queries evaluated in both runs; two-sided paired t-test and "
            "randomization test",
        },
        "runs": runs,
        "comparisons": [_compare(baseline, r, names) for r in results[1:]],
        "outputs": {"report": report.REPORT_FILE, "plot": report.PLOT_FILE, "metrics": METRICS_FILE},
        "fusion": None,
    }


def _compare(baseline: RunResult, run: RunResult, names: list[str]) -> dict[str, Any]:
    position = {q: i for i, q in enumerate(baseline.query_ids)}
    pairs = [(position[q], i) for i, q in enumerate(run.query_ids) if q in position]
    base_idx = np.array([b for b, _ in pairs], dtype=np.int64)
    run_idx = np.array([r for _, r in pairs], dtype=np.int64)
    base = np.stack([baseline.values[m][base_idx] for m in names], axis=1)
    other = np.stack([run.values[m][run_idx] for m in names], axis=1)
    diffs = other - base
    rand_p = randomization_p_values(diffs) if len(pairs) else [None] * len(names)
    out = {}
    for j, m in enumerate(names):
        base_mean = float(base[:, j].mean()) if len(pairs) else None
        delta = float(diffs[:, j].mean()) if len(pairs) else None
        out[m] = {
            "baseline_mean": base_mean,
            "run_mean": float(other[:, j].mean()) if len(pairs) else None,
            "delta": delta,
            "relative": delta / base_mean if base_mean else None,
            "t_test_p": paired_t_test(base[:, j], other[:, j]),
            "randomization_p": None if rand_p[j] is None else float(rand_p[j]),
            "improved": int(np.count_nonzero(diffs[:, j] > 0)),
            "hurt": int(np.count_nonzero(diffs[:, j] < 0)),
            "tied": int(np.count_nonzero(diffs[:, j] == 0)),
        }
    return {"baseline": baseline.source.name, "run": run.source.name, "queries": len(pairs), "metrics": out}


def _write_bytes(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    with fs.open_output_stream(path) as stream:
        stream.write(data)
