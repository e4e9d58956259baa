"""The offline rerank pipeline's configuration and stages: pairs in, scored and ranked rows out.

read ─► validate ─► resolve media (CPU) ─► score (actor pool) ─► checkpoint pieces ─► rank per query
     ─► write ranked/ + errors/ ─► manifest.json (written last: its presence means the output is complete)

`pipelines.rerank.run.run_rerank` runs them as a job (resume, run identity, manifest);
`pipelines.api.rerank_dataset` runs the same stages over a Ray Dataset: `score_pairs` then `rank_scored`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
import ray

from actors.media.loader import MEDIA, MEDIA_COLUMNS, MediaSpec, resolve_media_blocks
from actors.pool import PoolSpec
from actors.reranker.preprocess import preprocess_block
from actors.reranker.spec import RerankerSpec
from actors.reranker.worker import SCORE, RerankWorker
from pipelines.inputs.sources import (
    FORMATS,
    FileFormat,
    Source,
    media_columns_with_values,
    open_source,
    parse_columns,
    stage_copy,
)
from pipelines.rerank.rank import RANK, only_scored, rank_group, to_errors
from pipelines.rerank.trec import check_tag
from pipelines.rerank.validate import VALIDATE, check_keep_columns, resolve_keep, validate_pairs
from pipelines.runs.model_access import check_remote_code, warn_remote_code
from pipelines.storage import uris
from schemas import columns as c
from schemas.settings import SettingError, at_least, one_of, setting, validate_nested
from schemas.stages import check_chain
from schemas.tables import PAIRS_SCHEMA, InputError, check_pairs_schema

Mode = Literal["error", "overwrite", "resume"]


def check_run_id(run_id: str | None) -> None:
    """A run id names a folder: a plain name, no '/', not starting with '.'."""
    if run_id is not None and (not run_id or "/" in run_id or run_id.startswith(".")):
        raise SettingError("run_id", f"{run_id!r}: use a plain name (no '/', not starting with '.')")


@dataclass(frozen=True, kw_only=True)
class RerankConfig:
    """Everything one rerank run needs. `jobs.rerank` generates one flag per field (nested specs
    flattened); `jobs.refresh` holds the same specs under `--rerank-*`."""

    pairs: str = setting(
        help="pairs (Parquet, JSON Lines or CSV): a file, a directory of shards or a glob; local or s3://"
    )
    output: str = setting(help="output directory (local or s3://): ranked/, errors/, manifest.json")
    format: FileFormat = setting(
        "auto",
        help="format of --pairs: parquet, jsonl (one JSON object per line) or csv (a header line); "
        "auto: from the file extension",
    )
    columns: tuple[str, ...] | None = setting(
        None,
        flag="column",
        action="append",
        metavar="COLUMN=INPUT",
        help="read the contract column COLUMN from the input column INPUT, e.g. query_text=question; "
        "repeatable",
    )
    keep_columns: tuple[str, ...] = setting(
        (),
        metavar="A,B|*",
        help="input columns carried unchanged into ranked/ (*: every input column)",
    )
    reranker: RerankerSpec = setting(help="reranker")
    pool: PoolSpec = setting(default_factory=PoolSpec, help="scoring actor pool")
    media: MediaSpec = setting(default_factory=MediaSpec, help="media (fetch and decode limits)")
    top_k: int | None = setting(None, help="keep only the best K candidates per query (default: all)")
    run_id: str | None = setting(
        None, help="run id; re-running with the same id resumes and never duplicates rows"
    )
    mode: Mode | None = setting(
        None,
        help="when --output already holds a run: error (refuse), overwrite (replace it), resume (continue it; "
        "it must have the same run id and settings). Default: resume for the same --run-id, else error",
    )
    rank_on_driver_rows: int = setting(
        1_000_000,
        help="rank on the driver (one Arrow sort of ids and scores, no shuffle) when the input has at most "
        "this many pairs; above it, a hash shuffle by query_id across the cluster; 0: always the cluster",
    )
    max_error_rate: float = setting(
        0.01,
        help="a run whose failed/pairs_in exceeds this exits 3, its output complete and its manifest saying why",
    )
    trec_run: bool = setting(
        False, help="also write <output>/run.trec: the ranked rows as a TREC run file (tag: the run id)"
    )

    def validate(self) -> RerankConfig:
        at_least(self, 1, "top_k")
        at_least(self, 0, "max_error_rate", "rank_on_driver_rows")
        one_of(self, "format", FORMATS)
        check_run_id(self.run_id)
        check_tag(self.run_id, self.trec_run)
        parse_columns(self.columns, PAIRS_SCHEMA.names)
        check_keep_columns(self.keep_columns)
        validate_nested(self)
        check_remote_code(self.reranker, "reranker")
        warn_remote_code(self.reranker)
        return self


@dataclass(frozen=True)
class OutputLayout:
    root: str
    manifest_name: str = "manifest.json"

    @property
    def ranked(self) -> str:
        return uris.join(self.root, "ranked")

    @property
    def errors(self) -> str:
        return uris.join(self.root, "errors")

    @property
    def scored(self) -> str:
        return uris.join(self.root, "_scored")

    @property
    def manifest(self) -> str:
        return uris.join(self.root, self.manifest_name)

    @property
    def staged_pairs(self) -> str:
        """JSON Lines or CSV pairs copied to Parquet, for the resumable reader (see `pairs_files`)."""
        return uris.join(self.root, "_input")


# The stages `run_rerank` wires, in order. The media stage is skipped when no media column holds a value;
# nothing after it needs its columns, so one chain covers both.
RERANK_CHAIN = (VALIDATE, MEDIA, SCORE, RANK)


@dataclass(frozen=True)
class PairsPlan:
    """What the driver learned about the pairs before any cluster work. `rename`: (input column, contract
    column) pairs from `--column`; `keep`: the kept input columns (`*` expanded); `media`: whether the
    media stage runs (a media column holds a value)."""

    keep: tuple[str, ...] = ()
    media: bool = True
    rename: tuple[tuple[str, str], ...] = ()
    source: Source | None = None

    @property
    def files(self) -> list[str]:
        return list(self.source.files) if self.source is not None else []


def check_pairs(
    pairs: str,
    fmt: FileFormat = "auto",
    columns: Sequence[str] | None = None,
    keep_columns: Sequence[str] = (),
) -> PairsPlan:
    """Driver-side validation before any cluster work: files exist, every file's schema (after the
    `--column` renames; for JSON Lines and CSV, its first block) fits the contract and feeds every stage of
    `RERANK_CHAIN` the columns it needs, the kept columns exist, the input has rows."""
    source = open_source(pairs, fmt, parse_columns(columns, PAIRS_SCHEMA.names), PAIRS_SCHEMA)
    schemas = source.schemas()
    for f, schema in schemas.items():
        check_pairs_schema(schema, where=f)
        check_chain(schema.names, RERANK_CHAIN, where=f)
    if source.is_empty():
        raise InputError(f"{pairs}: the input has no rows")
    keep = resolve_keep(keep_columns, {f: schema.names for f, schema in schemas.items()})
    if source.format == "parquet":
        found = media_columns_with_values(list(source.files), [source.input_name(n) for n in MEDIA_COLUMNS])
        media = bool(found)
    else:
        media = any(n in schema.names for schema in schemas.values() for n in MEDIA_COLUMNS)
    return PairsPlan(keep, media, source.rename, source)


def check_inputs(pairs: str) -> list[str]:
    """`check_pairs` for pairs under the contract's own column names: their files."""
    return check_pairs(pairs).files


def pairs_files(plan: PairsPlan, layout: OutputLayout) -> list[str]:
    """Parquet files holding the pairs, for the resumable reader (a row's key is its position in a Parquet
    file): the input files themselves, or for JSON Lines and CSV a Parquet copy under `_input/`, written
    once and reused by every attempt of the run while the input files are unchanged."""
    if plan.source is None or plan.source.format == "parquet":
        return plan.files
    return stage_copy(plan.source, layout.staged_pairs)


PREPROCESS_TASK_MEMORY = 1 << 30  # peak RSS of a preprocess worker, SmolLM2, 2,048-row blocks: 1.0 GiB


def content_drop(cfg: RerankConfig, keep: Sequence[str]) -> tuple[str, ...]:
    """The content columns that leave once preprocessed: all but the kept (`keep`), none when prefix
    reuse tokenises the text in the actor."""
    content = [*c.QUERY_CONTENT, *c.CANDIDATE_CONTENT]
    return () if cfg.reranker.prefix_reuse else tuple(n for n in content if n not in keep)


def preprocess_stage(
    ds: ray.data.Dataset, cfg: RerankConfig, drop: Sequence[str] = (), worker_cls=RerankWorker
) -> ray.data.Dataset:
    """Each pair's features, made once in CPU tasks ahead of the scoring actors (`actors.reranker.preprocess`),
    the columns `drop` removed; with `preprocess_tasks` 0 the actors do both instead."""
    # A read block is a whole Parquet row group (100,000 rows, say): preprocessed in one task, it would
    # reach the actors only once all of it was done. Cut into blocks of `block_rows` first (a streaming
    # repartition, no shuffle, run in the task before), each preprocessed by a task of its own.
    ds = ds.repartition(target_num_rows_per_block=cfg.pool.block_rows)
    if cfg.pool.preprocess_tasks == 0:
        return ds
    return ds.map_batches(
        preprocess_block,
        fn_kwargs={"spec": cfg.reranker, "drop": tuple(drop), "worker_cls": worker_cls},
        # Whole blocks: a batch size here would make Ray Data bundle blocks until it holds that many rows.
        batch_size=None,
        batch_format="pyarrow",
        num_cpus=1,
        # A worker holding torch, transformers and the processor. Besides sizing the tasks, the request
        # keeps this stage out of the task before it: fused, one task would preprocess every block the
        # repartition cut and hand them on as one block when done.
        memory=PREPROCESS_TASK_MEMORY,
        concurrency=cfg.pool.preprocess_tasks,
        udf_modifying_row_count=False,
    )


def attempts_dir(output: str | None) -> str | None:
    """Where scoring actors mark the blocks they are on (`actors.reranker.quarantine`), inside the checkpoint."""
    return uris.join(output, "_scored", ".attempts") if output else None


def score_stage(
    ds: ray.data.Dataset, cfg: RerankConfig, worker_cls=RerankWorker, commit=None, drop=()
) -> ray.data.Dataset:
    """The scoring actors. With `commit` (see `RerankWorker.__call__`) each actor commits the blocks it
    scores itself and the stage outputs what `commit` returns (a row count per block); `drop`: columns
    the actor removes from its output."""
    return ds.map_batches(
        worker_cls,
        fn_constructor_kwargs={"spec": cfg.reranker, "torch_threads": cfg.pool.torch_threads},
        fn_kwargs={"attempts_dir": attempts_dir(cfg.output), "commit": commit, "drop": drop},
        batch_format="pyarrow",
        udf_modifying_row_count=commit is not None,
        **cfg.pool.actor_options(),
    )


ROWS_PER_RANK_PARTITION = 200_000


def rank_partitions(rows: int) -> int:
    """Hash partitions for the per-query ranking shuffle: enough to spread big runs over the cluster, few
    for small ones (each partition is a reduce task and at least one output file)."""
    return max(
        1,
        min(
            ray.data.DataContext.get_current().default_hash_shuffle_parallelism,
            -(-rows // ROWS_PER_RANK_PARTITION),
        ),
    )


MEDIA_TASK_MEMORY = MediaSpec().task_memory()  # bytes a media task reserves with the default media settings


def media_stage(ds: ray.data.Dataset, cfg: RerankConfig) -> ray.data.Dataset:
    """Fetch and decode media references in CPU tasks, one block of `block_rows` rows at a time (a
    reference shared by pairs of a block is fetched once). A block whose media decode to more than
    `--media-block-bytes` comes out as several smaller blocks."""
    return ds.map_batches(
        resolve_media_blocks,
        fn_kwargs={"spec": cfg.media},
        batch_size=cfg.pool.block_rows,
        batch_format="pyarrow",
        num_cpus=1,
        # Sized from the media settings (the decoded block, one item decoding, the fetches waiting to be
        # decoded). Besides sizing the tasks, a memory request the scoring actors do not make keeps Ray from
        # fusing this stage into them on CPU-only runs: fetching and decoding never run inside an actor.
        memory=cfg.media.task_memory(),
        udf_modifying_row_count=False,
    )


def block_stats(table: pa.Table) -> dict[str, float]:
    """Counts and actor times of one scored block, combined over the checkpoint's pieces for the manifest
    (summed; `min_*` / `max_*` keep the smallest / largest)."""
    ok = pc.is_null(table.column(c.ROW_ERROR))

    def total(name: str):
        return pc.sum(table.column(name)).as_py() or 0 if name in table.column_names else 0

    stats = {
        "rows": table.num_rows,
        "scored": pc.sum(pc.cast(ok, pa.int64())).as_py() or 0,
        "tokens": total(c.ROW_TOKENS),
        "padded_tokens": total(c.ROW_PADDED),
        "unsorted_padded_tokens": total(c.ROW_UNSORTED_PADDED),
        "truncated": total(c.ROW_TRUNCATED),
        **{name: total(column) for name, column in c.ACTOR_TIME.items()},
    }
    for key, name, fn in (
        ("min_forward_start", c.ROW_FORWARD_START, pc.min),
        ("max_forward_end", c.ROW_FORWARD_END, pc.max),
    ):
        value = fn(table.column(name)).as_py() if name in table.column_names else None
        if value is not None:
            stats[key] = value
    return stats


@dataclass(frozen=True)
class Reranked:
    """A rerank's result, lazily: `ranked` (the scored pairs with `score` and `rank`, ranked per query,
    top-k applied, kept columns carried) and `errors` (`query_id`, `candidate_id`, `stage`, `error`: the
    pairs that could not be scored). Both read the same scored rows; executing both executes the scoring
    twice unless those rows were materialized (`rerank_dataset(..., materialize_scores=True)`)."""

    ranked: ray.data.Dataset
    errors: ray.data.Dataset


def score_pairs(
    ds: ray.data.Dataset,
    cfg: RerankConfig,
    plan: PairsPlan,
    worker_cls=RerankWorker,
    extra_stages=(),
    commit=None,
) -> ray.data.Dataset:
    """rename (`--column`) ─► validate ─► `extra_stages` ─► media (when `plan.media`) ─► preprocess ─►
    score: one row per input row, its `score` or its `__error`, internal columns included (or, with
    `commit`, what it returns per committed block). `cfg` gives the reranker, the pool and the media
    limits."""
    if plan.rename:
        ds = ds.rename_columns(dict(plan.rename))
    ds = ds.map_batches(
        validate_pairs, fn_kwargs={"keep": plan.keep}, batch_format="pyarrow", batch_size=None
    )
    for stage in extra_stages:
        ds = stage(ds)
    if plan.media:
        ds = media_stage(ds, cfg)
    # The actors drop the same columns: a no-op after the preprocess stage, needed when they preprocess.
    drop = content_drop(cfg, plan.keep)
    return score_stage(preprocess_stage(ds, cfg, drop, worker_cls), cfg, worker_cls, commit, drop)


def rank_scored(
    scored: ray.data.Dataset,
    *,
    top_k: int | None = None,
    keep: Sequence[str] = (),
    num_partitions: int | None = None,
) -> Reranked:
    """Split scored rows (from `score_pairs`) into the errors table and the ranked table: each query's
    rows brought together by a hash shuffle on `query_id` (`num_partitions` reduce tasks; None: Ray's
    default) and ranked, top-k applied."""
    errors = scored.map_batches(to_errors, batch_format="pyarrow")
    ranked = (
        scored.map_batches(only_scored, fn_kwargs={"keep": tuple(keep)}, batch_format="pyarrow")
        .groupby(c.QUERY_ID, num_partitions=num_partitions)
        .map_groups(rank_group, fn_kwargs={"top_k": top_k, "keep": tuple(keep)}, batch_format="pyarrow")
    )
    return Reranked(ranked=ranked, errors=errors)
