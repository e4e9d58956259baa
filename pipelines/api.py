"""Reranking from Python: a step of a Ray Data pipeline, or a call on a list of pairs.

    import ray
    from ray.data.expressions import col
    from pipelines.api import RerankerSpec, rerank_dataset

    pairs = ray.data.read_parquet("s3://bucket/pairs/").filter(expr=col("lang") == "en")
    result = rerank_dataset(pairs, RerankerSpec(model="Qwen/Qwen3-Reranker-0.6B"), top_k=10)
    result.ranked.filter(expr=col("rank") <= 3).write_parquet("s3://bucket/top3/")

`rerank_dataset` builds the stages `jobs.rerank` runs (validate ─► media ─► score ─► rank per query), from
the same functions, and returns lazy Datasets: nothing runs until they are consumed. The settings are the
job's own specs (`RerankerSpec`, `PoolSpec`, `MediaSpec`), validated here as the CLI validates them.

A first-stage run (what `jobs.rerank --run RUN --corpus C --queries Q --depth K` reads) becomes pairs with
`pairs_from_run`, joined by the job's own functions, ready for `rerank_dataset`:

    pairs = pairs_from_run("bm25.trec", "corpus.jsonl", "queries.jsonl", depth=100)
    result = rerank_dataset(pairs, RerankerSpec(model="Qwen/Qwen3-Reranker-0.6B"))
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
import ray

from actors.media.loader import MEDIA_COLUMNS, MediaSpec
from actors.pool import PoolSpec
from actors.reranker.spec import RerankerSpec
from pipelines.inputs import first_stage
from pipelines.inputs.first_stage import join_run, open_first_stage, stage_run_pairs
from pipelines.inputs.runs import read_run
from pipelines.inputs.sources import FORMATS, FileFormat
from pipelines.rerank.config import RerankConfig
from pipelines.rerank.inputs import RERANK_CHAIN, PairsPlan
from pipelines.rerank.pipeline import Reranked, rank_scored, score_pairs
from pipelines.rerank.validate import ALL_COLUMNS, resolve_keep
from pipelines.storage import uris
from schemas import columns as c
from schemas.settings import SettingError, at_least, one_of
from schemas.stages import check_chain
from schemas.tables import InputError, check_pairs_schema

__all__ = [
    "MediaSpec",
    "PoolSpec",
    "Reranked",
    "RerankedRows",
    "RerankerSpec",
    "pairs_from_run",
    "rerank_dataset",
    "rerank_pairs",
]

WHERE = "the pairs Dataset"


def rerank_dataset(
    pairs: ray.data.Dataset,
    reranker: RerankerSpec,
    *,
    pool: PoolSpec | None = None,
    media: MediaSpec | None = None,
    top_k: int | None = None,
    keep_columns: Sequence[str] = (),
    num_partitions: int | None = None,
    materialize_scores: bool = False,
) -> Reranked:
    """Rerank a Dataset of pairs (the columns of the pairs contract: `query_id`, `candidate_id`, and per
    side text or media references). Returns `Reranked(ranked, errors)`, both lazy.

    `keep_columns`: input columns carried into `ranked` unchanged (`["*"]`: every one). `num_partitions`:
    reduce tasks of the per-query shuffle (None: Ray's default). `materialize_scores`: score now and hold
    the scored rows in Ray's object store, so that consuming both `ranked` and `errors` scores once (the
    CLI keeps them in its checkpoint instead). A bad setting raises `SettingError` naming the field
    (`reranker.max_length: ...`); when the Dataset knows its schema, a missing column raises `InputError`
    before anything runs."""
    cfg = RerankConfig(
        pairs=WHERE,  # the stages read their settings from a job config; a Dataset has no path or output
        output="",
        reranker=reranker,
        pool=pool or PoolSpec(),
        media=media or MediaSpec(),
        top_k=top_k,
        keep_columns=tuple(keep_columns),
    ).validate()
    plan = plan_for(pairs, cfg.keep_columns)
    scored = score_pairs(pairs, cfg, plan)
    if materialize_scores:
        scored = scored.materialize()
    return rank_scored(scored, top_k=top_k, keep=plan.keep, num_partitions=num_partitions)


def plan_for(pairs: ray.data.Dataset, keep: Sequence[str]) -> PairsPlan:
    """The checks `jobs.rerank` runs on files, run on the Dataset's schema when Ray knows it without
    executing anything (reading Parquet, from Python rows); `*` asks Ray for it (one block may run). Without
    a schema the media stage stays in (it passes rows without media through)."""
    schema = pairs.schema(fetch_if_missing=ALL_COLUMNS in keep)
    if schema is None:
        return PairsPlan(keep=tuple(keep), media=True)  # a kept column the rows lack fails on a worker
    names = list(schema.names)
    if isinstance(schema.base_schema, pa.Schema):
        check_pairs_schema(schema.base_schema, where=WHERE)
    check_chain(names, RERANK_CHAIN, where=WHERE)
    return PairsPlan(keep=resolve_keep(keep, {WHERE: names}), media=any(n in names for n in MEDIA_COLUMNS))


@dataclass(frozen=True)
class RerankedRows:
    """`rerank_pairs`' result: `ranked` rows ordered by query_id then rank, and the `errors` rows."""

    ranked: list[dict[str, Any]]
    errors: list[dict[str, Any]]


def rerank_pairs(
    pairs: Iterable[Mapping[str, Any]] | pa.Table,
    reranker: RerankerSpec,
    *,
    pool: PoolSpec | None = None,
    media: MediaSpec | None = None,
    top_k: int | None = None,
    keep_columns: Sequence[str] = (),
) -> RerankedRows:
    """Rerank a small in-memory list of pairs (dicts with the pairs contract's keys, or an Arrow table) and
    return the rows. Starts a local Ray instance when none is running, as Ray Data does; for data that
    does not fit in the driver's memory use `rerank_dataset`."""
    table = pairs if isinstance(pairs, pa.Table) else pa.Table.from_pylist(list(pairs))
    if table.num_rows == 0:
        raise InputError("rerank_pairs: no pairs given")
    result = rerank_dataset(
        ray.data.from_arrow(table),
        reranker,
        pool=pool,
        media=media,
        top_k=top_k,
        keep_columns=keep_columns,
        num_partitions=1,
        materialize_scores=True,
    )
    ranked = sorted(result.ranked.take_all(), key=lambda r: (r[c.QUERY_ID], r[c.RANK]))
    return RerankedRows(ranked=ranked, errors=result.errors.take_all())


def pairs_from_run(
    run: str,
    corpus: str | None = None,
    queries: str | None = None,
    *,
    beir: str | None = None,
    split: str = "test",
    depth: int | None = None,
    format: FileFormat = "auto",
    columns: Mapping[str, str] | None = None,
    staging: str | None = None,
) -> ray.data.Dataset:
    """A first-stage run joined with its corpus and queries into pairs, as `jobs.rerank --run` joins them
    (`pipelines.inputs.first_stage`), for `rerank_dataset`.

    `run`: TREC run text, or Parquet / JSON Lines rows (`query_id`, `doc_id` or `candidate_id`, `score`,
    `rank`); `corpus` and `queries` (a query's optional `instruction` becomes its pairs' prompt), or
    `beir=DIR` with `split`; `format` and `columns` ({contract column: input column}) apply to the corpus
    and queries as `--format` and `--column` do. `depth`: each query's K best rows by the run's rank, taken
    before the join. The pairs carry the run's score and rank as `retrieval_score` / `retrieval_rank`; a
    row whose document or query is missing carries the reason in `__input_error`, and `rerank_dataset`
    makes it an error row (stage `join`), as the job does.

    Inputs up to 64 MiB are joined in this process and handed to Ray as one table. Larger ones are joined
    on Ray Data into Parquet under `staging`, which they require: a directory every node sees (local or
    `s3://`), whose contents the pairs replace unless it holds a join of the same files and depth already.
    Raises `SettingError` naming a bad argument and `InputError` naming a missing file or column, before
    any cluster work."""
    inputs = SimpleNamespace(  # what `open_first_stage` reads of the job's config
        run=run,
        corpus=corpus,
        queries=queries,
        beir=beir,
        split=split,
        depth=depth,
        format=format,
        columns=tuple(f"{column}={name}" for column, name in (columns or {}).items()),
    )
    at_least(inputs, 1, "depth")
    one_of(inputs, "format", FORMATS)
    if beir is not None:
        for name in ("corpus", "queries", "columns"):
            if getattr(inputs, name):
                raise SettingError(name, "not with beir: the BEIR directory holds the corpus and queries")
    elif corpus is None or queries is None:
        raise SettingError("corpus" if corpus is None else "queries", "required with a run (or beir=DIR)")
    first = open_first_stage(inputs)
    if staging is not None:
        return ray.data.read_parquet(
            stage_run_pairs(first, staging), filesystem=uris.pyarrow_filesystem(staging)
        )
    size = first.bytes()
    if size > first_stage.DRIVER_BYTES:
        raise InputError(
            f"{run}: the run, corpus and queries hold {size:,} bytes, over the "
            f"{first_stage.DRIVER_BYTES:,} joined in this process; pass staging= a directory every node "
            "sees (local or s3://) to join them on Ray Data"
        )
    table = join_run(read_run(first.run), first.corpus.read_table(), first.queries.read_table(), depth)
    return ray.data.from_arrow(table)
