"""Reranker scores cached across nights: an unchanged pair is not scored again.

A pair's key is sha256 of (query content hash, doc content hash, reranker identity, and the pair's own
`instruction` when it has one), the identity being the weights' fingerprint and every setting that changes
a score (`pipelines.runs.info.value_key`: prompt, max length, resolved dtype, score path, fp32 head, ...;
`pipelines.refresh.content_hash.pair_key`); ids play no part, so a pair whose content is unchanged hits the
cache even under new ids, and an edited document, query or instruction misses it. The cache is Parquet under
`ROOT/score_cache/<reranker key>/run=<run id>/` (`cache_key`, `score`, `scored_run`): each run appends its
own shard (rewritten whole on resume, so rows are never duplicated) and never reads its own.

As an `extra_stages` entry of `run_rerank` the cache fills `__cached_score`, which the reranker actor honours;
the lookup is a co-partitioned join on the key (the cache can outgrow any one node), or, when the night's
pairs and the cache together are at most `driver_rows` rows, a join of each block against the whole cache
read once on the driver (no shuffle). After the run, `append` adds the pairs scored this run (on the driver
for a night of at most `driver_rows` pairs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from pipelines.refresh.content_hash import content_hashes, pair_key
from pipelines.refresh.join import co_partition, join_tables, partitions_for
from pipelines.storage import uris
from pipelines.storage.tables import read_file, read_table, write_file
from schemas import columns as c
from schemas.tables import PAIRS_SCHEMA, InputError

# What the lookup sees: validate_pairs' output (the first stage of run_rerank, with the checkpoint's row
# key) plus the cache key.
KEYED_PAIRS_SCHEMA = pa.schema(
    [
        *PAIRS_SCHEMA,
        *(pa.field(n, pa.string()) for n in (c.ROW_ERROR, c.ROW_STAGE, c.ROW_CACHE_KEY)),
        pa.field(c.ROW_KEY, pa.int64()),
    ]
)
LOOKUP_SCHEMA = pa.schema(
    [pa.field(c.ROW_CACHE_KEY, pa.string()), pa.field(c.ROW_CACHED_SCORE, pa.float32())]
)
CACHE_SCHEMA = pa.schema(
    [pa.field(c.CACHE_KEY, pa.string()), pa.field(c.SCORE, pa.float32()), pa.field(c.SCORED_RUN, pa.string())]
)


@dataclass(frozen=True)
class ScoreCache:
    """The cache of one reranker identity (its weights' fingerprint and every setting that changes a score:
    `pipelines.runs.info.value_key`), as seen by run `run_id`."""

    root: str  # ROOT/score_cache
    identity: str
    run_id: str
    pairs: int = 0  # pairs this run looks up (sizes the shuffles)
    rows_per_partition: int = 50000
    driver_rows: int = 0  # lookups and appends of at most this many rows skip the shuffle (driver_io)

    @property
    def directory(self) -> str:
        return uris.join(self.root, self.identity[:16])

    @property
    def shard(self) -> str:
        return uris.join(self.directory, f"run={self.run_id}")

    def previous_files(self) -> list[str]:
        """Cache files of earlier runs (this run's own shard excluded)."""
        if not uris.exists(self.directory):
            return []
        try:
            files = uris.list_parquet(self.directory)
        except InputError:  # the directory exists but holds no shard yet
            return []
        return [f for f in files if f"/run={self.run_id}/" not in f]

    def stage(self, ds: ray.data.Dataset) -> ray.data.Dataset:
        """Add `__cache_key` to every pair and `__cached_score` where the cache knows the pair."""
        keyed = ds.map_batches(
            add_cache_keys,
            fn_kwargs={"identity": self.identity},
            batch_format="pyarrow",
        )
        files = self.previous_files()
        if not files:
            return keyed
        entries = uris.count_rows(files)
        if self.pairs + entries <= self.driver_rows:
            # A small cache is read here once and joined onto every block where it is: no shuffle.
            lookup = pa.concat_tables([_as_lookup(read_file(f, [c.CACHE_KEY, c.SCORE])) for f in files])
            return keyed.map_batches(
                _lookup_broadcast, fn_kwargs={"cache": ray.put(lookup)}, batch_format="pyarrow"
            )
        cache = ray.data.read_parquet(files, filesystem=uris.pyarrow_filesystem(self.directory))
        cache = cache.map_batches(_as_lookup, batch_format="pyarrow")
        return co_partition(
            keyed,
            cache,
            key=[c.ROW_CACHE_KEY],
            num_partitions=partitions_for(self.pairs + entries, self.rows_per_partition),
            fn=_lookup,
            left_schema=KEYED_PAIRS_SCHEMA,
            right_schema=LOOKUP_SCHEMA,
        )

    def append(self, scored: str) -> dict[str, int]:
        """Write the pairs scored this run (from run_rerank's `_scored/`) as this run's shard; returns
        {"cache_hits", "scored"}: pairs answered from the cache and pairs the reranker scored."""
        present = uris.read_schema(
            uris.list_parquet(scored)[0]
        ).names  # no __cached_score before a first cache
        wanted = [c.ROW_CACHE_KEY, c.SCORE, c.ROW_CACHED_SCORE, c.ROW_ERROR]
        columns = [n for n in wanted if n in present]
        uris.remove(self.shard)
        if uris.count_rows(uris.list_parquet(scored)) <= self.driver_rows:
            return self._append_on_driver(read_table(scored, columns))
        rows = ray.data.read_parquet(scored, filesystem=uris.pyarrow_filesystem(scored)).select_columns(
            columns
        )
        stats = rows.map_batches(_block_stats, batch_format="pyarrow", batch_size=None).sum(
            ["cache_hits", "scored"]
        )
        counts = {"cache_hits": int(stats["sum(cache_hits)"] or 0), "scored": int(stats["sum(scored)"] or 0)}
        if counts["scored"]:  # a night answered wholly from the cache adds no shard (and no empty shuffle)
            entries = rows.map_batches(
                _new_entries, fn_kwargs={"run_id": self.run_id}, batch_format="pyarrow"
            )
            partitions = partitions_for(counts["scored"], self.rows_per_partition)
            entries = co_partition(
                entries, None, key=[c.CACHE_KEY], num_partitions=partitions, fn=_first_per_key
            )
            entries.write_parquet(self.shard, filesystem=uris.pyarrow_filesystem(self.shard))
        return counts

    def _append_on_driver(self, rows: pa.Table) -> dict[str, int]:
        """`append` for a night of few pairs: the same counts and shard, from one read in this process."""
        stats = _block_stats(rows)
        counts = {k: int(stats.column(k)[0].as_py()) for k in ("cache_hits", "scored")}
        if counts["scored"]:
            write_file(_first_per_key(_new_entries(rows, self.run_id), None), self.shard)
        return counts


def add_cache_keys(table: pa.Table, identity: str) -> pa.Table:
    """`__cache_key` of every pair: its query and candidate content, the reranker identity and the pair's
    own `instruction` when it has one (`pair_key`)."""
    queries = content_hashes(table, "query").to_pylist()
    docs = content_hashes(table, "candidate").to_pylist()
    if c.INSTRUCTION in table.column_names:
        instructions = table.column(c.INSTRUCTION).to_pylist()
    else:
        instructions = [None] * table.num_rows
    keys = [
        pair_key(q, d, identity, instruction)
        for q, d, instruction in zip(queries, docs, instructions, strict=True)
    ]
    if c.ROW_CACHE_KEY in table.column_names:
        table = table.drop_columns([c.ROW_CACHE_KEY])
    return table.append_column(c.ROW_CACHE_KEY, pa.array(keys, pa.string()))


def _as_lookup(table: pa.Table) -> pa.Table:
    return pa.table(
        {
            c.ROW_CACHE_KEY: table.column(c.CACHE_KEY),
            c.ROW_CACHED_SCORE: table.column(c.SCORE).cast(pa.float32()),
        }
    )


def _lookup(pairs: pa.Table, cache: pa.Table) -> pa.Table:
    return join_tables(pairs, cache, [c.ROW_CACHE_KEY], how="left outer")


def _lookup_broadcast(pairs: pa.Table, cache) -> pa.Table:
    """`_lookup` of one block against the whole (small) cache: the rows the shuffle path gives."""
    return _lookup(pairs, ray.get(cache) if isinstance(cache, ray.ObjectRef) else cache)


def _new_entries(table: pa.Table, run_id: str) -> pa.Table:
    fresh = _freshly_scored(table)
    fresh_rows = table.filter(fresh)
    return pa.Table.from_arrays(
        [
            fresh_rows.column(c.ROW_CACHE_KEY),
            fresh_rows.column(c.SCORE).cast(pa.float32()),
            pa.array([run_id] * fresh_rows.num_rows, pa.string()),
        ],
        schema=CACHE_SCHEMA,
    )


def _freshly_scored(table: pa.Table) -> pa.Array:
    ok = pc.and_(pc.is_null(table.column(c.ROW_ERROR)), pc.is_valid(table.column(c.SCORE)))
    return pc.and_(ok, pc.is_null(_cached(table)))


def _cached(table: pa.Table):
    if c.ROW_CACHED_SCORE in table.column_names:
        return table.column(c.ROW_CACHED_SCORE)
    return pa.nulls(table.num_rows, pa.float32())


def _first_per_key(entries: pa.Table, _right) -> pa.Table:
    """Identical pairs scored twice in one run (same content under two ids) are cached once."""
    index = entries.append_column("__i", pa.array(np.arange(entries.num_rows, dtype=np.int64)))
    first = index.group_by([c.CACHE_KEY], use_threads=False).aggregate([("__i", "min")]).column("__i_min")
    return entries.take(first)


def _block_stats(table: pa.Table) -> pa.Table:
    ok = pc.is_null(table.column(c.ROW_ERROR))
    hits = pc.and_(ok, pc.is_valid(_cached(table)))
    return pa.table(
        {
            "cache_hits": [pc.sum(pc.cast(hits, pa.int64())).as_py() or 0],
            "scored": [pc.sum(pc.cast(_freshly_scored(table), pa.int64())).as_py() or 0],
        }
    )
