"""The offline rerank pipeline's stages: pairs in, scored and ranked rows out (the config: `pipelines.rerank.config`;

read ─► validate ─► resolve media (CPU) ─► score (actor pool) ─► checkpoint pieces ─► rank per query
     ─► write ranked/ + errors/ ─► manifest.json (written last: its presence means the output is complete)

`pipelines.rerank.run.run_rerank` runs them as a job (resume, run identity, manifest);
`pipelines.api.rerank_dataset` runs the same stages over a Ray Dataset: `score_pairs` then `rank_scored`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import ray

from actors.media.loader import MediaSpec, resolve_media_blocks
from actors.media.spec import UNTRUSTED_TASK_RETRIES
from actors.reranker.preprocess import preprocess_block
from actors.reranker.worker import RerankWorker
from pipelines.rerank.config import RerankConfig
from pipelines.rerank.fuse import Fusion
from pipelines.rerank.inputs import PairsPlan
from pipelines.rerank.rank import only_scored, rank_group, to_errors
from pipelines.rerank.validate import validate_pairs
from pipelines.storage import uris
from schemas import columns as c

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
        max_retries=UNTRUSTED_TASK_RETRIES,
        udf_modifying_row_count=False,
    )


def attempts_dir(output: str | None) -> str | None:
    """Where scoring actors mark the blocks they are on (`actors.reranker.quarantine`), inside the checkpoint."""
    return uris.join(output, "_scored", ".attempts") if output else None


def score_stage(
    ds: ray.data.Dataset, cfg: RerankConfig, worker_cls=RerankWorker, commit=None, drop=(), fingerprint=None
) -> ray.data.Dataset:
    """The scoring actors. With `commit` (see `RerankWorker.__call__`) each actor commits the blocks it
    scores itself and the stage outputs what `commit` returns (a row count per block); `drop`: columns
    the actor removes from its output; `fingerprint`: the model's, as the run's identity records it (an
    actor that loaded other bytes fails the run)."""
    kwargs = {
        "attempts_dir": attempts_dir(cfg.output),
        "commit": commit,
        "drop": drop,
        "death_budget": cfg.pool.max_task_retries,
    }
    return ds.map_batches(
        worker_cls,
        fn_constructor_kwargs={"spec": cfg.reranker, "torch_threads": cfg.pool.torch_threads},
        fn_kwargs=kwargs if fingerprint is None else {**kwargs, "fingerprint": fingerprint},
        batch_format="pyarrow",
        udf_modifying_row_count=commit is not None,
        # With markers, deaths are counted there (a live node's only), so Ray's own retries are generous.
        **{**cfg.pool.actor_options(), **(cfg.pool.counted_retry_options() if cfg.output else {})},
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
        max_retries=UNTRUSTED_TASK_RETRIES,
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
    fingerprint=None,
) -> ray.data.Dataset:
    """rename (`--column`) ─► validate ─► `extra_stages` ─► media (when `plan.media`) ─► preprocess ─►
    score: one row per input row, its `score` or its `__error`, internal columns included (or, with
    `commit`, what it returns per committed block). `cfg` gives the reranker, the pool and the media
    limits; `fingerprint` see `score_stage`."""
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
    ds = preprocess_stage(ds, cfg, drop, worker_cls)
    return score_stage(ds, cfg, worker_cls, commit, drop, fingerprint)


def rank_scored(
    scored: ray.data.Dataset,
    *,
    top_k: int | None = None,
    keep: Sequence[str] = (),
    fusion: Fusion | None = None,
    num_partitions: int | None = None,
) -> Reranked:
    """Split scored rows (from `score_pairs`) into the errors table and the ranked table: each query's
    rows brought together by a hash shuffle on `query_id` (`num_partitions` reduce tasks; None: Ray's
    default) and ranked (`rank_group`: fused with `fusion` when given), top-k applied."""
    errors = scored.map_batches(to_errors, batch_format="pyarrow")
    rank_kwargs = {"top_k": top_k, "keep": tuple(keep), "fusion": fusion}
    ranked = (
        scored.map_batches(only_scored, fn_kwargs={"keep": tuple(keep)}, batch_format="pyarrow")
        .groupby(c.QUERY_ID, num_partitions=num_partitions)
        .map_groups(rank_group, fn_kwargs=rank_kwargs, batch_format="pyarrow")
    )
    return Reranked(ranked=ranked, errors=errors)
