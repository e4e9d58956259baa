"""The offline rerank pipeline: pairs Parquet in, ranked Parquet + errors + manifest.json out.

read ─► validate ─► resolve media (CPU) ─► score (actor pool) ─► checkpoint scored/ ─► rank per query
     ─► write ranked/ + errors/ ─► manifest.json (written last: its presence means the output is complete)
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.compute as pc
import ray

from actors.media_loader import MEDIA_COLUMNS, MediaSpec, resolve_media
from actors.pool import PoolSpec
from actors.reranker import RerankerSpec, RerankWorker
from pipelines import io
from pipelines.rank_per_query import RANK, rank_group
from pipelines.run_info import library_versions, model_fingerprint
from pipelines.stages import MEDIA, SCORE, check_chain
from pipelines.validate_pairs import VALIDATE, validate_pairs
from schemas import columns as c
from schemas.settings import SettingError, at_least, setting, validate_nested
from schemas.tables import ERRORS_SCHEMA, InputError, check_pairs_schema


def check_run_id(run_id: str | None) -> None:
    """A run id names a folder: a plain name, no '/', not starting with '.'."""
    if run_id is not None and (not run_id or "/" in run_id or run_id.startswith(".")):
        raise SettingError("run_id", f"{run_id!r}: use a plain name (no '/', not starting with '.')")


@dataclass(frozen=True, kw_only=True)
class RerankConfig:
    """Everything one rerank run needs. `jobs.rerank` generates one flag per field (nested specs
    flattened); `jobs.refresh` holds the same specs under `--rerank-*`."""

    pairs: str = setting(help="pairs Parquet: a file, a directory of shards or a glob; local or s3://")
    output: str = setting(help="output directory (local or s3://): ranked/, errors/, manifest.json")
    reranker: RerankerSpec = setting(help="reranker")
    pool: PoolSpec = setting(default_factory=PoolSpec, help="scoring actor pool")
    media: MediaSpec = setting(default_factory=MediaSpec, help="media (fetch and decode limits)")
    top_k: int | None = setting(None, help="keep only the best K candidates per query (default: all)")
    run_id: str | None = setting(
        None, help="run id; re-running with the same id resumes and never duplicates rows"
    )

    def validate(self) -> RerankConfig:
        at_least(self, 1, "top_k")
        check_run_id(self.run_id)
        validate_nested(self)
        return self


@dataclass(frozen=True)
class OutputLayout:
    root: str
    manifest_name: str = "manifest.json"

    @property
    def ranked(self) -> str:
        return io.join(self.root, "ranked")

    @property
    def errors(self) -> str:
        return io.join(self.root, "errors")

    @property
    def scored(self) -> str:
        return io.join(self.root, "_scored")

    @property
    def scored_done(self) -> str:
        return io.join(self.root, "_scored.json")

    @property
    def manifest(self) -> str:
        return io.join(self.root, self.manifest_name)


# The stages `run_rerank` wires, in order. The media stage is skipped when no media column holds a value;
# nothing after it needs its columns, so one chain covers both.
RERANK_CHAIN = (VALIDATE, MEDIA, SCORE, RANK)


def check_inputs(pairs: str) -> list[str]:
    """Driver-side validation before any cluster work: files exist, every file's schema fits the contract
    and feeds every stage of `RERANK_CHAIN` the columns it needs."""
    files = io.list_parquet(pairs)
    for f in files:
        schema = io.read_schema(f)
        check_pairs_schema(schema, where=f)
        check_chain(schema.names, RERANK_CHAIN, where=f)
    if io.count_rows(files) == 0:
        raise InputError(f"{pairs}: the input has no rows")
    return files


def score_stage(ds: ray.data.Dataset, cfg: RerankConfig, worker_cls=RerankWorker) -> ray.data.Dataset:
    return ds.map_batches(
        worker_cls,
        fn_constructor_kwargs={"spec": cfg.reranker, "torch_threads": cfg.pool.torch_threads},
        batch_format="pyarrow",
        udf_modifying_row_count=False,
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


def media_columns_with_values(files: list[str], columns: list[str] = MEDIA_COLUMNS) -> list[str]:
    """The media columns (of `columns`) that hold at least one reference in `files`, from Parquet
    statistics (no data read); a column without statistics counts as holding values."""
    import pyarrow.parquet as pq

    found: set[str] = set()
    for uri in files:
        fs, path = io.filesystem(uri)
        with fs.open(path, "rb") as f:
            meta = pq.ParquetFile(f).metadata
        names = [meta.schema.column(j).name for j in range(meta.num_columns)]
        for j, name in enumerate(names):
            if name not in columns or name in found:
                continue
            for g in range(meta.num_row_groups):
                group = meta.row_group(g)
                stats = group.column(j).statistics
                if stats is None or not stats.has_null_count or stats.null_count < group.num_rows:
                    found.add(name)
                    break
    return [name for name in columns if name in found]


MEDIA_TASK_MEMORY = 512 * 1024**2  # bytes reserved per media task: one block's fetched and decoded media


def media_stage(ds: ray.data.Dataset, cfg: RerankConfig) -> ray.data.Dataset:
    """Fetch and decode media references in CPU tasks, one block of `block_rows` rows at a time (a
    reference shared by pairs of a block is fetched once)."""
    return ds.map_batches(
        resolve_media,
        fn_kwargs={"spec": cfg.media},
        batch_size=cfg.pool.block_rows,
        batch_format="pyarrow",
        num_cpus=1,
        # Besides sizing the tasks, a memory request the scoring actors do not make keeps Ray from fusing
        # this stage into them on CPU-only runs: fetching and decoding never run inside a scoring actor.
        memory=MEDIA_TASK_MEMORY,
        udf_modifying_row_count=False,
    )


def to_errors(table: pa.Table) -> pa.Table:
    bad = table.filter(pc.is_valid(table.column(c.ROW_ERROR)))
    return pa.table(
        {
            c.QUERY_ID: bad.column(c.QUERY_ID),
            c.CANDIDATE_ID: bad.column(c.CANDIDATE_ID),
            c.STAGE: bad.column(c.ROW_STAGE),
            c.ERROR: bad.column(c.ROW_ERROR),
        },
        schema=ERRORS_SCHEMA,
    )


def only_scored(table: pa.Table) -> pa.Table:
    return table.filter(pc.is_null(table.column(c.ROW_ERROR)))


def block_stats(table: pa.Table) -> pa.Table:
    ok = pc.is_null(table.column(c.ROW_ERROR))
    return pa.table(
        {
            "rows": [table.num_rows],
            "scored": [pc.sum(pc.cast(ok, pa.int64())).as_py() or 0],
            "tokens": [pc.sum(table.column(c.ROW_TOKENS)).as_py() or 0],
            "padded_tokens": [pc.sum(table.column(c.ROW_PADDED)).as_py() or 0],
            "unsorted_padded_tokens": [pc.sum(table.column(c.ROW_UNSORTED_PADDED)).as_py() or 0],
        }
    )


def ranked_stats(table: pa.Table) -> pa.Table:
    firsts = pc.sum(pc.cast(pc.equal(table.column(c.RANK), 1), pa.int64())).as_py() or 0
    return pa.table({"rows": [table.num_rows], "queries": [firsts]})


def run_rerank(
    cfg: RerankConfig,
    worker_cls=RerankWorker,
    extra_stages=(),
    *,
    manifest_name: str = "manifest.json",
    keep_scored: bool = False,
) -> dict:
    """Run (or resume) one rerank. Returns the manifest. Assumes `ray.init` was called.

    A job that composes this one (the nightly refresh) passes `manifest_name` to keep `manifest.json`,
    written last, for its own manifest, and `keep_scored` to read every scored pair from `_scored/`
    (internal columns included) before removing it itself."""
    cfg.validate()
    layout = OutputLayout(cfg.output, manifest_name)
    run_id = cfg.run_id or time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    if io.exists(layout.manifest):
        manifest = io.read_json(layout.manifest)
        if cfg.run_id is None or manifest.get("run_id") == run_id:
            manifest["resumed"] = "already complete"
            return manifest
        raise InputError(
            f"{cfg.output} already holds the complete run {manifest.get('run_id')!r}; choose another --output"
        )
    files = check_inputs(cfg.pairs)
    total_rows = io.count_rows(files)
    timings: dict[str, float] = {}
    started = time.perf_counter()

    resumed_scoring = (
        io.exists(layout.scored_done) and io.read_json(layout.scored_done).get("run_id") == run_id
    )
    if not resumed_scoring:
        io.remove(layout.scored)
        ds = ray.data.read_parquet(files, filesystem=io.pyarrow_filesystem(cfg.pairs))
        ds = ds.map_batches(validate_pairs, batch_format="pyarrow", batch_size=None)
        for stage in extra_stages:
            ds = stage(ds)
        if media_columns_with_values(files):
            ds = media_stage(ds, cfg)
        ds = score_stage(ds, cfg, worker_cls)
        t0 = time.perf_counter()
        ds.write_parquet(layout.scored, filesystem=io.pyarrow_filesystem(cfg.output))
        timings["score_s"] = time.perf_counter() - t0
        io.write_json(layout.scored_done, {"run_id": run_id})

    fs_out = io.pyarrow_filesystem(cfg.output)
    scored = ray.data.read_parquet(layout.scored, filesystem=fs_out)
    io.remove(layout.ranked)
    io.remove(layout.errors)
    t0 = time.perf_counter()
    scored.map_batches(to_errors, batch_format="pyarrow").write_parquet(layout.errors, filesystem=fs_out)
    (
        scored.map_batches(only_scored, batch_format="pyarrow")
        .groupby(c.QUERY_ID, num_partitions=rank_partitions(total_rows))
        .map_groups(rank_group, fn_kwargs={"top_k": cfg.top_k}, batch_format="pyarrow")
        .write_parquet(layout.ranked, filesystem=fs_out)
    )
    timings["rank_write_s"] = time.perf_counter() - t0

    stats = scored.map_batches(block_stats, batch_format="pyarrow", batch_size=None).sum(
        ["rows", "scored", "tokens", "padded_tokens", "unsorted_padded_tokens"]
    )
    ranked = ray.data.read_parquet(layout.ranked, filesystem=fs_out).map_batches(
        ranked_stats, batch_format="pyarrow", batch_size=None
    )
    ranked_counts = ranked.sum(["rows", "queries"])
    timings["total_s"] = time.perf_counter() - started
    manifest = _manifest(
        cfg,
        run_id,
        files,
        stats,
        int(ranked_counts["sum(queries)"]),
        int(ranked_counts["sum(rows)"]),
        timings,
        resumed_scoring,
    )
    if not keep_scored:
        io.remove(layout.scored)
        io.remove(layout.scored_done)
    io.write_json(layout.manifest, manifest)
    return manifest


def _manifest(cfg, run_id, files, stats, queries, ranked_rows, timings, resumed) -> dict:
    rows, scored = int(stats["sum(rows)"]), int(stats["sum(scored)"])
    tokens, padded = int(stats["sum(tokens)"]), int(stats["sum(padded_tokens)"])
    unsorted = int(stats["sum(unsorted_padded_tokens)"])
    score_s = timings.get("score_s")
    return {
        "run_id": run_id,
        "model": {"id": cfg.reranker.model, **model_fingerprint(cfg.reranker.model)},
        "config": asdict(cfg),
        "input_files": files,
        "counts": {
            "pairs_in": rows,
            "scored": scored,
            "failed": rows - scored,
            "queries": queries,
            "ranked_rows": ranked_rows,
        },
        "tokens": {
            "real": tokens,
            "padded": padded,
            "padding_efficiency": tokens / padded if padded else None,
            "unsorted_fixed_batches_padded": unsorted,
            "unsorted_fixed_batches_padding_efficiency": tokens / unsorted if unsorted else None,
        },
        "timings": timings,
        "throughput": {
            "pairs_per_s": scored / score_s if score_s else None,
            "tokens_per_s": tokens / score_s if score_s else None,
        },
        "resumed_scoring": resumed,
        "versions": library_versions(),
    }
