"""The linear fusion weight, tuned on judged queries (`jobs.evaluate --tune-fusion`).

The last run of the evaluation (ranked output with `score` and `retrieval_score`) is fused as
`jobs.rerank --fuse linear --fuse-weight w` fuses it (`pipelines.rerank.fuse`, the same formula and the
same float32 values) for every w of 0.00, 0.05, ..., 1.00; each fused order is measured as the evaluation
measures any run (trec_eval's nDCG@10, ties by document id descending), averaged over the queries both in
the run and in the qrels. The best mean wins; a tie goes to the larger w, the one closer to the reranker
alone. The result is written as `fusion.json` into the evaluation's own output folder:
`{"method": "linear", "weight": W, "tuned_on": {...}}`, what `--fuse linear` reads from a model directory.

The qrels must be validation queries: a weight tuned on the queries it is then reported on flatters it.
Tune on a run ranked without `--top-k`: the job normalises over every candidate of a query, before top-k.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.evaluate.metrics import query_metrics
from pipelines.evaluate.runs import RunInputError, RunSource
from pipelines.rerank.fuse import linear, minmax, query_codes
from schemas.columns import CANDIDATE_ID, QUERY_ID, RETRIEVAL_SCORE, SCORE
from schemas.qrels import Qrels

WEIGHTS = tuple(round(i * 0.05, 2) for i in range(21))  # 0.00, 0.05, ..., 1.00
TUNE_K = 10
TUNE_METRIC = f"ndcg@{TUNE_K}"
ROWS = pa.schema(
    [
        (QUERY_ID, pa.string()),
        (CANDIDATE_ID, pa.string()),
        (SCORE, pa.float32()),
        (RETRIEVAL_SCORE, pa.float32()),
    ]
)


def check_tunable(source: RunSource) -> RunSource:
    """The run to tune on, checked before any work: ranked Parquet holding `score` and `retrieval_score`."""
    where = f"--tune-fusion: run {source.name!r}"
    if source.kind == "trec":
        raise RunInputError(f"{where} is a TREC run file, one score a line; tune on a ranked/ output folder")
    names = pq.read_schema(source.files[0], filesystem=source.filesystem).names
    for column in (SCORE, RETRIEVAL_SCORE):
        if column not in names:
            raise RunInputError(
                f"{where}: {source.files[0]} lacks column {column!r}; tune on the ranked output of a rerank "
                "whose pairs carry retrieval_score"
            )
    return source


def read_rows(source: RunSource) -> pa.Table:
    """The run's ids, scores and retrieval scores (a validation run: read on the driver), typed as the
    rerank job writes them."""
    parts = [pq.read_table(f, filesystem=source.filesystem, columns=list(ROWS.names)) for f in source.files]
    return pa.concat_tables(parts, promote_options="permissive").select(ROWS.names).cast(ROWS)


def tune_weight(rows: pa.Table, qrels: Qrels, name: str = "run") -> dict:
    """Grid-search the linear weight over `rows` (`read_rows`' columns) against `qrels`: the best weight,
    its mean nDCG@10, the number of queries averaged and the mean at every weight of the grid."""
    rows = rows.filter(pc.is_in(rows.column(QUERY_ID), pa.array(list(qrels), pa.string())))
    if not rows.num_rows:
        raise RunInputError(f"--tune-fusion: run {name!r} has no query in the qrels")
    if rows.column(SCORE).null_count:
        raise RunInputError(f"--tune-fusion: run {name!r} has a null {SCORE}")
    codes = query_codes(rows.column(QUERY_ID))
    norm_score = minmax(_floats(rows, SCORE), codes)
    norm_retrieval = minmax(_floats(rows, RETRIEVAL_SCORE), codes)
    queries = _queries(rows, codes, name)
    grid = {}
    for weight in WEIGHTS:
        fused = linear(norm_score, norm_retrieval, weight)
        values = [
            query_metrics(docs, fused[members], qrels[qid], [TUNE_K])[TUNE_METRIC]
            for qid, docs, members in queries
        ]
        grid[weight] = math.fsum(values) / len(values)
    best = max(WEIGHTS, key=lambda w: (grid[w], w))  # a tie goes to the larger weight
    return {"weight": best, TUNE_METRIC: grid[best], "queries": len(queries), "grid": grid}


def fusion_document(tuned: dict, source: RunSource, qrels_path: str) -> dict:
    """`fusion.json`: what `--fuse linear` reads from a model directory, and what the weight was tuned on."""
    return {
        "method": "linear",
        "weight": tuned["weight"],
        "tuned_on": {
            "run": source.location,
            "qrels": qrels_path,
            "queries": tuned["queries"],
            "metric": TUNE_METRIC,
            TUNE_METRIC: tuned[TUNE_METRIC],
            "grid": {f"{w:.2f}": v for w, v in tuned["grid"].items()},
        },
    }


def _floats(rows: pa.Table, name: str) -> np.ndarray:
    return pc.cast(rows.column(name), pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)


def _queries(rows: pa.Table, codes: np.ndarray, name: str) -> list[tuple[str, list[str], np.ndarray]]:
    """(query id, its candidate ids, their row positions) per query; a candidate twice is an error."""
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.r_[True, codes[order][1:] != codes[order][:-1], True])
    qids = rows.column(QUERY_ID).to_pylist()
    docs = rows.column(CANDIDATE_ID).to_pylist()
    out = []
    for start, end in itertools.pairwise(bounds):
        members = order[start:end]
        ids = [docs[i] for i in members]
        if len(set(ids)) != len(ids):
            raise RunInputError(f"--tune-fusion: run {name!r} query {qids[members[0]]!r} repeats a candidate")
        out.append((qids[members[0]], ids, members))
    return out
