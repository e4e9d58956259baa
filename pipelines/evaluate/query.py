"""One (run, query) evaluated: the per-query metrics and TREC run lines, on a Ray worker (`map_groups`
over the shuffle of `pipelines.evaluate.pipeline`) or, for runs of few rows, in the driver (`per_query_on_driver`,
the same function over the same groups, without a cluster round trip)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from pipelines.evaluate.metrics import metric_names, query_metrics, trec_order
from pipelines.evaluate.runs import RunInputError, RunSource, read_trec_file
from schemas.columns import CANDIDATE_ID, QUERY_ID
from schemas.qrels import Qrels

_WHITESPACE = re.compile(r"\s")
RUN = "__run"
SCORE = "__score"
TREC_LINES = "__trec_lines"
TREC_BAD_ID = "__trec_bad_id"
JUDGED = "__judged"


def per_query_on_driver(
    sources: tuple[RunSource, ...], qrels: Qrels, ks: tuple[int, ...]
) -> Iterator[pa.Table]:
    """The rows the cluster path's `map_groups` yields, one table per run, computed in this process: for
    runs whose rows are few enough that a shuffle would cost more than the work."""
    score_columns = {s.name: s.score_column for s in sources}
    for s in sources:
        columns = [QUERY_ID, CANDIDATE_ID, s.score_column]
        if s.kind == "trec":
            parts = [read_trec_file(s)]
        else:
            parts = [pq.read_table(f, filesystem=s.filesystem, columns=columns) for f in s.files]
        rows = tag_run(
            pa.concat_tables(parts, promote_options="permissive"),
            run_name=s.name,
            score_column=s.score_column,
        )
        index = rows.append_column("__i", pa.array(np.arange(rows.num_rows, dtype=np.int64)))
        groups = index.group_by([QUERY_ID], use_threads=False).aggregate([("__i", "list")])
        per_query = [
            query_row(rows.take(members), qrels, list(ks), score_columns)
            for members in groups.column("__i_list").to_pylist()
        ]
        if per_query:
            yield pa.concat_tables(per_query)


def tag_run(batch: pa.Table, *, run_name: str, score_column: str) -> pa.Table:
    """Normalise one run's rows to a shared schema (string ids, float64 score) tagged with the run, so
    that every run goes through a single shuffle."""
    return pa.table(
        {
            RUN: pa.array([run_name] * batch.num_rows, pa.string()),
            QUERY_ID: pc.cast(batch[QUERY_ID], pa.string()),
            CANDIDATE_ID: pc.cast(batch[CANDIDATE_ID], pa.string()),
            SCORE: pc.cast(batch[score_column], pa.float64()),
        }
    )


_QRELS_CACHE: dict[str, Qrels] = {}


def _cached_qrels(ref: ray.ObjectRef) -> Qrels:
    # One deserialisation per worker process, not one per query group.
    key = ref.hex()
    if key not in _QRELS_CACHE:
        _QRELS_CACHE.clear()
        _QRELS_CACHE[key] = ray.get(ref)
    return _QRELS_CACHE[key]


def evaluate_query_group(
    group: pa.Table, *, qrels_ref: ray.ObjectRef, ks: list[int], score_columns: dict[str, str]
) -> pa.Table:
    """map_groups UDF: all candidates of one (run, query) in, one row of metrics and TREC run lines out.

    `score_columns` maps each run to the column its scores came from, for error messages."""
    return query_row(group, _cached_qrels(qrels_ref), ks, score_columns)


def query_row(group: pa.Table, qrels: Qrels, ks: list[int], score_columns: dict[str, str]) -> pa.Table:
    """One (run, query)'s rows (`tag_run`'s columns) in, its row of metrics and TREC run lines out."""
    run_name, qid = group[RUN][0].as_py(), group[QUERY_ID][0].as_py()
    score_name = score_columns[run_name]
    where = f"run {run_name!r} query {qid!r}"
    if qid is None or group[CANDIDATE_ID].null_count or group[SCORE].null_count:
        raise RunInputError(f"{where}: null {QUERY_ID}, {CANDIDATE_ID} or {score_name}; drop those rows")
    docs = group[CANDIDATE_ID].to_pylist()
    scores = group[SCORE].to_numpy()
    if np.isnan(scores).any():
        raise RunInputError(f"{where}: {score_name} is NaN for some candidates; they cannot be ordered")
    if len(set(docs)) != len(docs):
        dup = next(d for d in docs if docs.count(d) > 1)
        raise RunInputError(f"{where}: candidate {dup!r} appears more than once; keep one row per pair")
    judgements = qrels.get(qid)
    values = query_metrics(docs, scores, judgements, ks) if judgements is not None else {}
    bad = next((s for s in [qid, *docs] if _WHITESPACE.search(s)), None)
    row: dict[str, pa.Array] = {
        RUN: pa.array([run_name], pa.string()),
        QUERY_ID: pa.array([qid], pa.string()),
        JUDGED: pa.array([judgements is not None]),
        **{m: pa.array([values.get(m)], pa.float64()) for m in metric_names(ks)},
        TREC_BAD_ID: pa.array([bad], pa.string()),
        TREC_LINES: pa.array([None if bad else _trec_lines(qid, docs, scores, run_name)], pa.large_string()),
    }
    return pa.table(row)


def _trec_lines(qid: str, docs: list[str], scores: np.ndarray, tag: str) -> str:
    order = trec_order(docs, scores)
    # repr() of the float64 value round-trips, so trec_eval reads back exactly the scores (and ties) we used.
    return "".join(
        f"{qid} Q0 {docs[i]} {rank} {float(scores[i])!r} {tag}\n" for rank, i in enumerate(order, start=1)
    )
