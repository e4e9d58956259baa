"""The ways of scoring one pairs set that `jobs.benchmark` times side by side.

(a) `rank_loop`: one `CrossEncoder.rank(query, documents)` call per query, what a user writes by hand;
(b) `predict_all`: one `CrossEncoder.predict` over every pair at its default batching (32 pairs, sorted by
    characters); (c) `bare_forward`: only the model forward over the pipeline's own micro-batches,
    tokenised beforehand, no Ray; (d) `pipeline`: `pipelines.rerank.run.run_rerank` end to end on Ray, timed
    from inside its actors as well (`TimedRerankWorker`).
Each returns a `Timed`: wall seconds, the scores (for parity), and what was padded.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from actors.reranker.fast_paths import finish_scores
from actors.reranker.worker import PACK_MIN_FILL, RerankWorker
from actors.token_budget import MicroBatch, pack_by_tokens
from jobs.bench.data import text_pairs
from schemas import columns as c

PREDICT_BATCH = 32  # CrossEncoder.predict / rank default batch_size
CLOCK_NAME, CLOCK_NAMESPACE = "rerank-bench-clock", "rerank-bench"


@dataclass
class Timed:
    seconds: float
    scores: np.ndarray  # aligned with the workload's rows
    padded_tokens: int
    extra: dict = field(default_factory=dict)
    cpu_seconds: float | None = None  # CPU time of the scoring process(es): robust to a shared machine


class Stopwatch:
    """Wall and process CPU seconds of a `with` block."""

    def __enter__(self) -> Stopwatch:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall, self.cpu = time.perf_counter() - self._wall, time.process_time() - self._cpu


@dataclass
class Workload:
    """One pairs set, prepared once: rows, real token lengths, and the pipeline's micro-batches."""

    table: pa.Table
    pairs: list[tuple[str, str]]
    lengths: np.ndarray  # real tokens per pair after the model's preprocessing
    blocks: list[tuple[np.ndarray, list[MicroBatch]]]  # (rows of a block, its micro-batches over those rows)

    @classmethod
    def build(
        cls,
        table: pa.Table,
        model,
        prompt: str | None,
        batch_tokens: int,
        block_rows: int,
        min_fill: float = PACK_MIN_FILL,
    ) -> Workload:
        pairs = text_pairs(table)
        lengths = np.concatenate(
            [
                model.preprocess(pairs[i : i + 256], prompt=prompt)["attention_mask"].sum(dim=1).numpy()
                for i in range(0, len(pairs), 256)
            ]
        )
        return cls(table, pairs, lengths, []).repacked(batch_tokens, block_rows, min_fill)

    def repacked(self, batch_tokens: int, block_rows: int, min_fill: float = PACK_MIN_FILL) -> Workload:
        """The same rows cut into blocks of `block_rows` in file order (as the pipeline's actors receive
        them), each packed into micro-batches as the worker packs it."""
        blocks = []
        for start in range(0, len(self.pairs), block_rows):
            rows = np.arange(start, min(start + block_rows, len(self.pairs)))
            blocks.append((rows, pack_by_tokens(self.lengths[rows], batch_tokens, min_fill=min_fill)))
        return Workload(self.table, self.pairs, self.lengths, blocks)

    @property
    def queries(self) -> dict[str, list[int]]:
        groups: dict[str, list[int]] = {}
        for i, q in enumerate(self.table.column(c.QUERY_ID).to_pylist()):
            groups.setdefault(q, []).append(i)
        return groups

    def char_sorted_padded_tokens(self, rows: list[int]) -> int:
        """Padded tokens of `predict`'s own batching of `rows`: sorted by characters, 32 at a time."""
        order = np.argsort([-(len(self.pairs[i][0]) + len(self.pairs[i][1])) for i in rows])
        ordered = np.asarray(rows)[order]
        return int(
            sum(
                self.lengths[ordered[s : s + PREDICT_BATCH]].max() * len(ordered[s : s + PREDICT_BATCH])
                for s in range(0, len(ordered), PREDICT_BATCH)
            )
        )

    @property
    def micro_batch_padded_tokens(self) -> int:
        return int(sum(b.padded_tokens for _, batches in self.blocks for b in batches))


def rank_loop(model, work: Workload, prompt: str | None) -> Timed:
    """`rank()` per query. `rank` takes no prompt, so an explicit prompt goes through `predict` per query,
    which is what `rank` calls."""
    scores = np.full(len(work.pairs), np.nan, dtype=np.float32)
    groups = work.queries
    padded = sum(work.char_sorted_padded_tokens(rows) for rows in groups.values())
    with Stopwatch() as watch:
        for rows in groups.values():
            query, docs = work.pairs[rows[0]][0], [work.pairs[i][1] for i in rows]
            if prompt is None:
                for hit in model.rank(query, docs):
                    scores[rows[hit["corpus_id"]]] = float(hit["score"])
            else:
                scores[rows] = model.predict([(query, d) for d in docs], prompt=prompt)
    return Timed(watch.wall, scores, padded, cpu_seconds=watch.cpu)


def predict_all(model, work: Workload, prompt: str | None) -> Timed:
    padded = work.char_sorted_padded_tokens(list(range(len(work.pairs))))
    with Stopwatch() as watch:
        scores = model.predict(work.pairs, prompt=prompt, batch_size=PREDICT_BATCH)
    return Timed(watch.wall, np.asarray(scores, dtype=np.float32), padded, cpu_seconds=watch.cpu)


def tokenise_micro_batches(model, work: Workload, prompt: str | None) -> list[tuple[np.ndarray, dict]]:
    """Each micro-batch's features, on the model's device: (c) then times the forward alone."""
    from sentence_transformers.util import batch_to_device

    prepared = []
    for rows, batches in work.blocks:
        for batch in batches:
            idx = rows[batch.rows]
            features = model.preprocess([work.pairs[i] for i in idx], prompt=prompt)
            prepared.append((idx, batch_to_device(features, model.device)))
    return prepared


def bare_forward(model, work: Workload, prepared: list[tuple[np.ndarray, dict]]) -> Timed:
    import torch

    scores = np.full(len(work.pairs), np.nan, dtype=np.float32)
    with Stopwatch() as watch, torch.inference_mode():
        for idx, features in prepared:
            scores[idx] = finish_scores(model, model(dict(features))["scores"])
    return Timed(watch.wall, scores, work.micro_batch_padded_tokens, cpu_seconds=watch.cpu)


class TimedRerankWorker(RerankWorker):
    """The pipeline's worker, reporting when it became ready and when each block started and ended to a
    named clock actor, so start-up and steady-state scoring can be told apart on any cluster. Warms the
    model up with one pair while starting, as a long-running job's first block would."""

    def __init__(self, spec, torch_threads=None):
        import ray

        started = time.time()
        super().__init__(spec, torch_threads)
        self.load()
        self.score_batch(self.featurize([("warm-up query", "warm-up document")])[0])
        self._clock = ray.get_actor(CLOCK_NAME, namespace=CLOCK_NAMESPACE)
        ray.get(self._clock.record.remote("ready", started, time.time(), 0, 0.0, os.nice(0), os.getpid()))

    def __call__(self, table: pa.Table, **kwargs) -> pa.Table:
        import ray

        started, cpu = time.time(), time.process_time()
        out = super().__call__(table, **kwargs)
        ended, cpu = time.time(), time.process_time() - cpu
        ray.get(
            self._clock.record.remote("block", started, ended, table.num_rows, cpu, os.nice(0), os.getpid())
        )
        return out


def _clock():
    import ray

    @ray.remote(num_cpus=0)
    class Clock:
        def __init__(self):
            self.events: list = []

        def record(
            self, kind: str, start: float, end: float, rows: int, cpu: float, nice: int, pid: int
        ) -> None:
            self.events.append((kind, start, end, rows, cpu, nice, pid))

        def drain(self) -> list:
            events, self.events = self.events, []
            return events

    return Clock.options(name=CLOCK_NAME, namespace=CLOCK_NAMESPACE, get_if_exists=True).remote()


def pipeline(cfg, work: Workload, pairs_dir: str, output: str) -> Timed:
    """`run_rerank` on the workload's Parquet with `cfg` (a RerankConfig without pairs/output)."""
    import dataclasses

    import pyarrow.parquet as pq
    import ray

    from pipelines.rerank.run import run_rerank

    clock = _clock()
    ray.get(clock.drain.remote())
    run_cfg = dataclasses.replace(cfg, pairs=pairs_dir, output=output)
    # Dispatch only once every actor is up: a pool whose first actor is ready alone takes up to two blocks
    # in flight, and on a set of a few blocks the other actors would then sit idle through the steady span.
    context = ray.data.DataContext.get_current()
    wait, context.wait_for_min_actors_s = context.wait_for_min_actors_s, 600
    started = time.time()
    try:
        manifest = run_rerank(run_cfg, worker_cls=TimedRerankWorker)
    finally:
        context.wait_for_min_actors_s = wait
    ended = time.time()
    events = ray.get(clock.drain.remote())
    ready = [e for e in events if e[0] == "ready"]
    blocks = [e for e in events if e[0] == "block"]
    first_ready = min(e[2] for e in ready)
    span = max(e[2] for e in blocks) - min(e[1] for e in blocks)

    ranked = pq.read_table(f"{output}/ranked", columns=[c.CANDIDATE_ID, c.SCORE])
    position = {cid: i for i, cid in enumerate(work.table.column(c.CANDIDATE_ID).to_pylist())}
    scores = np.full(len(work.pairs), np.nan, dtype=np.float32)
    for cid, score in zip(ranked.column(0).to_pylist(), ranked.column(1).to_pylist(), strict=True):
        scores[position[cid]] = score
    extra = {
        "wall_s": ended - started,
        "startup_s": first_ready - started,
        "excl_startup_s": ended - first_ready,
        "scoring_span_s": span,
        "actors_ready": len(ready),
        "actor_niceness": sorted({e[5] for e in ready}),
        "blocks": len(blocks),
        "blocks_per_actor": sorted(Counter(e[6] for e in blocks).values()),
        "manifest_padding_efficiency": manifest["tokens"]["padding_efficiency"],
    }
    cpu = float(sum(e[4] for e in blocks))  # the actors' own processes only, not Ray's
    return Timed(span, scores, int(manifest["tokens"]["padded"]), extra, cpu_seconds=cpu)


def worker_variant(worker: RerankWorker, table: pa.Table) -> Timed:
    """One in-process call of a worker on a whole table (lengths, micro-batches, fast paths; no Ray)."""
    with Stopwatch() as watch:
        out = worker(table)
    scores = out.column(c.SCORE).to_numpy(zero_copy_only=False)
    padded = int(np.sum(out.column(c.ROW_PADDED)))
    tokens = int(np.sum(out.column(c.ROW_TOKENS)))
    return Timed(watch.wall, scores, padded, {"real_tokens": tokens}, cpu_seconds=watch.cpu)
