"""Fused scores (`--fuse linear|rrf`): the reranker's score combined with the first stage's, per query and
before top-k. `pipelines.rerank.rank` adds the `fused_score` column (float32, beside `score`) and orders
`rank` by it on every ranking path; this module holds the formulas, the settings and their checks.

- linear: fused = w * minmax(score) + (1 - w) * minmax(retrieval_score), each min-max normalised over the
  query's scored candidates, (v - min) / (max - min); a query whose values are all equal has nothing to
  tell apart and normalises to 0 for every candidate. `w` is `--fuse-weight`, else the `weight` of
  `fusion.json` in the model directory (`{"method": "linear", "weight": W, "tuned_on": ...}`, as
  `jobs.evaluate --tune-fusion` writes it).
- rrf: fused = 1 / (60 + rank_by_score) + 1 / (60 + retrieval_rank), `rank_by_score` being the reranker's
  own rank within the query (ties as the ranking breaks them: candidate_id ascending, then input order).

A candidate whose retrieval value is null gets no retrieval part: 0 after normalisation (linear, the
query's minimum and maximum taken over the values present), no reciprocal-rank term (rrf: a document a
list does not hold adds nothing). Computed in float64, written as float32, the column `rank` orders by.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.storage import uris
from schemas import columns as c
from schemas.settings import SettingError
from schemas.tables import InputError

FuseMethod = Literal["linear", "rrf"]
FUSE_METHODS: tuple[FuseMethod, ...] = ("linear", "rrf")
RRF_K = 60
FUSION_FILE = "fusion.json"
NEEDS = {"linear": c.RETRIEVAL_SCORE, "rrf": c.RETRIEVAL_RANK}  # the pairs column each method reads
TUNE_HINT = "tune one on validation queries with `python -m jobs.evaluate --tune-fusion`"
FUSE_HELP = (
    "add fused_score (float32, beside score) and rank by it, per query and before --top-k: linear, "
    "w * minmax(score) + (1 - w) * minmax(retrieval_score); rrf, 1/(60 + rank by score) + "
    "1/(60 + retrieval_rank). Needs that column in the pairs (default: off, rank by score)"
)
FUSE_WEIGHT_HELP = (
    "with --fuse linear: w, the reranker's share, 0..1 (default: the weight of fusion.json in the model "
    "directory, as jobs.evaluate --tune-fusion writes it)"
)


@dataclass(frozen=True)
class Fusion:
    """How one run fuses: the method and, for linear, the weight of the reranker's score."""

    method: FuseMethod
    weight: float | None = None


def fusion_of(fuse: FuseMethod | None, weight: float | None) -> Fusion | None:
    return Fusion(fuse, weight if fuse == "linear" else None) if fuse is not None else None


def check_settings(fuse: str | None, weight: float | None) -> None:
    """`--fuse` and `--fuse-weight` on their own (the weight may still come from the model directory)."""
    if fuse is not None and fuse not in FUSE_METHODS:
        raise SettingError("fuse", f"{fuse!r} is not one of {', '.join(FUSE_METHODS)}")
    if weight is not None and fuse != "linear":
        raise SettingError("fuse_weight", "only with --fuse linear" + ("; rrf has no weight" if fuse else ""))
    if weight is not None and not 0.0 <= weight <= 1.0:
        raise SettingError("fuse_weight", f"must be within 0..1, got {weight!r}")


def check_columns(names: Iterable[str], fuse: str | None, where: str) -> None:
    """Fail in one line, before any scoring, when the pairs (columns `names`, read from `where`) lack the
    column `fuse` reads."""
    if fuse is None or NEEDS[fuse] in set(names):
        return
    need = NEEDS[fuse]
    raise InputError(
        f"{where}: --fuse {fuse} needs the column {need!r}, which the pairs lack; add it (or read it from "
        f"another column with --column {need}=NAME), or drop --fuse"
    )


def resolve_weight(fuse: str | None, weight: float | None, model: str, revision: str | None = None):
    """The linear weight a run uses: `--fuse-weight`, else the model directory's `fusion.json`; None for
    rrf or without fusion. No weight at all is an InputError saying how to get one."""
    if fuse != "linear" or weight is not None:
        return weight
    found = read_fusion_file(model, revision)
    if found is None:
        raise InputError(
            f"--fuse linear needs a weight and the model {model} has no {FUSION_FILE}: pass --fuse-weight W "
            f"(0..1), or {TUNE_HINT} and put its {FUSION_FILE} in the model directory"
        )
    where, doc = found
    value = doc.get("weight") if isinstance(doc, dict) else None
    linear_doc = isinstance(doc, dict) and doc.get("method") == "linear"
    if not linear_doc or isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise InputError(
            f'{where}: expected {{"method": "linear", "weight": W}} with W within 0..1; pass '
            "--fuse-weight W instead, or tune it again"
        )
    return float(value)


def read_fusion_file(model: str, revision: str | None = None) -> tuple[str, dict] | None:
    """(where, content) of `fusion.json` beside a model: a local directory, an s3:// prefix, or a hub id
    (at `revision`; from the local cache when offline). None when there is none."""
    local = os.path.expanduser(model)
    if os.path.isdir(local) or "://" in model:
        path = os.path.join(local, FUSION_FILE) if os.path.isdir(local) else uris.join(model, FUSION_FILE)
        return (path, uris.read_json(path)) if uris.exists(path) else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import HfHubHTTPError, LocalEntryNotFoundError

    try:
        path = hf_hub_download(model, FUSION_FILE, revision=revision)
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError):
        return None  # no such file, no such repo, or the hub is out of reach: the caller says what to do
    return path, uris.read_json(path)


def query_codes(queries: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A dense integer per distinct query id, for per-query reductions."""
    if isinstance(queries, pa.ChunkedArray):
        queries = queries.combine_chunks()
    return pc.dictionary_encode(queries).indices.to_numpy(zero_copy_only=False).astype(np.int64)


def minmax(values: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """`values` (float64, NaN for null) min-max normalised within each query (`codes`): 0 for a query whose
    values are all equal, and for a null value."""
    out = np.zeros(len(values))
    present = ~np.isnan(values)
    if not present.any():
        return out
    groups = int(codes.max()) + 1
    low, high = np.full(groups, np.inf), np.full(groups, -np.inf)
    np.minimum.at(low, codes[present], values[present])
    np.maximum.at(high, codes[present], values[present])
    span = (high - low)[codes]
    spread = present & (span > 0)
    out[spread] = (values[spread] - low[codes][spread]) / span[spread]
    return out


def linear(norm_score: np.ndarray, norm_retrieval: np.ndarray, weight: float) -> np.ndarray:
    """The linear fusion of normalised scores, as float32 (what `fused_score` holds)."""
    return (weight * norm_score + (1.0 - weight) * norm_retrieval).astype(np.float32)


def rrf(score_ranks: np.ndarray, retrieval_ranks: np.ndarray) -> np.ndarray:
    """Reciprocal rank fusion (k = 60) of the reranker's ranks and the retrieval ranks (NaN: none), float32."""
    retrieval = np.zeros(len(retrieval_ranks))
    present = ~np.isnan(retrieval_ranks)
    retrieval[present] = 1.0 / (RRF_K + retrieval_ranks[present])
    return (1.0 / (RRF_K + score_ranks.astype(np.float64)) + retrieval).astype(np.float32)


def fused_scores(table: pa.Table, fusion: Fusion, score_ranks: np.ndarray) -> pa.Array:
    """The `fused_score` of every row of `table` (one query's rows or many queries', each query whole);
    `score_ranks`: each row's rank by score within its query (rrf)."""
    if fusion.method == "rrf":
        return pa.array(rrf(score_ranks, _floats(table, c.RETRIEVAL_RANK)), pa.float32())
    if fusion.weight is None:  # a config's weight is resolved before ranking (`with_fusion_weight`)
        raise ValueError("linear fusion needs its weight resolved; got none")
    codes = query_codes(table.column(c.QUERY_ID))
    norm_score = minmax(_floats(table, c.SCORE), codes)
    norm_retrieval = minmax(_floats(table, c.RETRIEVAL_SCORE), codes)
    return pa.array(linear(norm_score, norm_retrieval, fusion.weight), pa.float32())


def _floats(table: pa.Table, name: str) -> np.ndarray:
    """Column `name` as float64, NaN for null."""
    if name not in table.column_names:  # the job checks the pairs before scoring (`check_columns`)
        raise InputError(f"fusion needs the column {name!r}, which the scored rows lack")
    column = pc.cast(table.column(name), pa.float64())
    return column.to_numpy(zero_copy_only=False).astype(np.float64)
