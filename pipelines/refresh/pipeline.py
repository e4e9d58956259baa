"""The nightly refresh: retrieve with a bi-encoder, rerank with a CrossEncoder, publish the run.

embed corpus (incremental) and queries (one execution, one actor pool) ─► exact top-k retrieval
─► candidates/ (query-clustered) ─► rerank (cached scores skipped) ─► append new scores to the cache
─► evaluate (with qrels) ─► manifest.json ─► LATEST

Tables of at most `--driver-rows` rows (the corpus for retrieval, the score-cache lookup and append, the
evaluated runs) are handled in the driver process rather than as Ray Data executions, whose fixed start-up
costs more than such a table's work (`pipelines.storage.tables`); bigger inputs take the cluster path, and both
give the same rows.

Each stage records its result under `runs/<run_id>/_stages/`; re-running a run id skips finished stages
and redoes the unfinished one from scratch, so no row is ever written twice. LATEST moves only after the
manifest is written: a night that fails anywhere leaves the previous run published.
"""

from __future__ import annotations

import time

from actors.embedder import PREFIX, EmbedWorker, Side
from actors.model_source import model_changed_in
from actors.reranker.worker import RerankWorker
from pipelines.inputs.sources import media_columns_with_values
from pipelines.refresh import embed
from pipelines.refresh.config import RefreshConfig, new_run_id, refuse_existing_run
from pipelines.refresh.inputs import Inputs, check_inputs, qrels_path, stage_inputs
from pipelines.refresh.manifest import night_manifest
from pipelines.refresh.publish import (
    RunLayout,
    finish_replacing,
    finished,
    mark_finished,
    mark_started,
    publish_decision,
    publish_latest,
    read_latest,
    replace_run,
)
from pipelines.refresh.retrieve import retrieve
from pipelines.refresh.score_cache import ScoreCache
from pipelines.rerank.run import run_rerank
from pipelines.rerank.trec import write_run_file
from pipelines.runs import progress
from pipelines.runs.checkpoint import Checkpoint
from pipelines.runs.lease import Lease, check_identity
from pipelines.storage import uris
from pipelines.storage.tables import clustered_by_query
from schemas import columns as c
from schemas.tables import InputError

RERANK_MANIFEST = "_rerank_manifest.json"
NIGHT_LEASE = "_night_lease.json"  # the rerank stage's own `_lease.json` sits beside it
NIGHT_RECORD = "_night.json"  # the night's identity (the rerank stage keeps `_run.json`)
EMBED_STAGES: dict[str, Side] = {"embed_corpus": "document", "embed_queries": "query"}
EVAL_KS = [1, 3, 5, 10]


def run_refresh(cfg: RefreshConfig, *, embed_worker_cls=EmbedWorker, rerank_worker_cls=RerankWorker) -> dict:
    """Run (or resume) one nightly refresh and publish it. Returns the manifest. Assumes `ray.init`."""
    cfg = cfg.validate().with_fusion_weight()  # --fuse linear: the weight used is the one recorded
    inputs = check_inputs(cfg)
    layout = RunLayout(cfg.output, cfg.run_id or new_run_id())
    finish_replacing(layout)  # an overwrite whose driver died while moving its complete attempt into place
    refuse_existing_run(cfg, layout)
    overwriting = uris.exists(layout.run_dir) and cfg.mode == "overwrite"
    if (
        overwriting
    ):  # the run stays in place (and published) until the new attempt is complete (`replace_run`)
        layout = layout.overwrite_attempt()
    elif uris.exists(layout.manifest):
        manifest = uris.read_json(layout.manifest)
        if manifest.get("published", True) and publish_decision(layout) is None:
            publish_latest(layout.root, layout.run_id)  # a run killed between its manifest and LATEST
        return {**manifest, "resumed": "already complete"}
    night = _Night(cfg, inputs, layout, read_latest(cfg.output))
    files = [*inputs.corpus_files, *inputs.query_files, *([q] if (q := qrels_path(cfg)) else [])]
    lease = Lease(layout.run_dir, file=NIGHT_LEASE, ttl_s=cfg.lease_ttl_s, heartbeat_s=cfg.lease_heartbeat_s)
    with lease:  # one driver per night; its rerank stage holds its own lease inside the run directory
        if overwriting:  # an earlier attempt that did not finish starts afresh: cleared only under the lease,
            for name in uris.list_names(
                layout.run_dir
            ):  # so a live attempt is never removed under its driver
                if name != NIGHT_LEASE:
                    uris.remove(uris.join(layout.run_dir, name))
        identity = cfg.identity(files, instructions=inputs.instructions)
        check_identity(layout.run_dir, layout.run_id, identity, record_file=NIGHT_RECORD)
        try:
            manifest = night.run(embed_worker_cls, rerank_worker_cls)
        except Exception as exc:
            if (changed := model_changed_in(exc)) is not None:  # the embedder's (the reranker's: run_rerank)
                raise InputError(changed) from exc
            raise
    return night.publish(manifest)  # after the lease: an overwrite attempt moves its directory first


class _Night:
    """One run's stages, each skipped when this run already finished it."""

    def __init__(self, cfg: RefreshConfig, inputs: Inputs, layout: RunLayout, previous: str | None):
        self.cfg, self.inputs, self.layout = cfg, inputs, layout
        # The published run's embeddings are reused, also by an overwrite of it (which leaves it in place).
        self.previous = previous if previous != layout.run_id or layout.directory else None
        self.key = cfg.key()
        self.timings: dict[str, float] = {}
        self.resumed: list[str] = []

    def stage(self, name: str, fn):
        return self.stages((name,), name, lambda _todo: {name: fn()})[name]

    def stages(self, names: tuple[str, ...], label: str, fn) -> dict[str, dict]:
        """Stages run together (one execution): those an earlier attempt finished are skipped, `fn(todo)`
        runs the others and returns their results by name; each is recorded as its own stage."""
        results = {n: r for n in names if (r := finished(self.layout, n, self.key)) is not None}
        for name in results:
            self.resumed.append(name)
            progress.logger.info("stage %s: finished by an earlier attempt of %s", name, self.layout.run_id)
        todo = [name for name in names if name not in results]
        if todo:
            t0 = time.perf_counter()
            with progress.stage(label, ", ".join(todo) if len(names) > 1 else ""):
                fresh = fn(todo)
            self.timings[f"{label}_s"] = round(time.perf_counter() - t0, 3)
            for name in todo:
                mark_finished(self.layout, name, self.key, fresh[name])
            results |= fresh
        return results

    def run(self, embed_worker_cls, rerank_worker_cls) -> dict:
        started = time.perf_counter()
        cfg, layout = self.cfg, self.layout
        mark_started(layout)
        if self.inputs.pending is not None:  # JSON Lines, CSV, renamed columns or BEIR: copied to Parquet
            self.inputs = Inputs(
                **self.stage("read_inputs", lambda: stage_inputs(self.inputs, layout.run_dir))
            )
        embedded = self.stages(tuple(EMBED_STAGES), "embed", lambda todo: self.embed(todo, embed_worker_cls))
        docs, queries = embedded["embed_corpus"], embedded["embed_queries"]
        if docs["rows"] == docs["failed"]:
            raise InputError(f"no document could be embedded (see {layout.embed_errors('document')})")
        retrieval = self.stage("retrieve", self.retrieve)
        if retrieval["candidates"] == 0:
            raise InputError(
                f"no candidates: no query could be embedded (see {layout.embed_errors('query')})"
            )
        cache = ScoreCache(
            root=layout.score_cache,
            identity=cfg.cache_identity(),
            run_id=layout.run_id,
            pairs=retrieval["candidates"],
            rows_per_partition=cfg.rows_per_partition,
            driver_rows=cfg.driver_rows,
        )
        rerank = self.stage("rerank", lambda: self.rerank(cache, rerank_worker_cls))
        trec_run = write_run_file(cfg.trec_run, layout.run_dir, layout.run_id)  # each attempt: no stage
        scored = Checkpoint(layout.run_dir)
        cached = self.stage("score_cache", lambda: cache.append(scored.directory))
        scored.remove()
        evaluation = self.stage("evaluate", self.evaluate) if qrels_path(cfg) else None
        self.timings["total_s"] = round(time.perf_counter() - started, 3)
        manifest = night_manifest(
            self,
            docs=docs,
            queries=queries,
            retrieval=retrieval,
            rerank=rerank,
            cached=cached,
            evaluation=evaluation,
        )
        manifest["outputs"]["trec_run"] = trec_run
        not_published = publish_decision(layout)
        if rerank["errors"]["exceeded"]:
            rate = rerank["errors"]["error_rate"]
            not_published = (
                f"{rate:.1%} of the reranked pairs failed, over --max-error-rate {cfg.max_error_rate:g}; "
                f"LATEST stays (see {layout.run_dir}/errors/)"
            )
        manifest["published"] = not_published is None
        if not_published:
            manifest["not_published"] = not_published
        uris.write_json(layout.manifest, manifest)
        return manifest

    def publish(self, manifest: dict) -> dict:
        """Move LATEST to the complete run when its manifest says it may (decided again, atomically, on the
        pointer). An overwrite's complete attempt first replaces the run it overwrites (`replace_run`)."""
        if self.layout.directory is not None:
            self.layout = replace_run(self.layout)
            manifest = uris.read_json(self.layout.manifest)
        if manifest.get("published"):
            lost = publish_latest(self.cfg.output, self.layout.run_id)
            if lost is not None:  # a night started later was published meanwhile
                manifest |= {"published": False, "not_published": lost}
                uris.write_json(self.layout.manifest, manifest)
        return manifest

    def embed(self, todo: list[str], worker_cls) -> dict[str, dict]:
        """Embed the sides of `todo` (stage names) together: one execution, one model load per actor."""
        sides, previous = [], None
        for name in todo:
            side = EMBED_STAGES[name]
            files = self.inputs.corpus_files if side == "document" else self.inputs.query_files
            earlier = None
            if side == "document" and self.previous is not None:
                candidate = RunLayout(self.cfg.output, self.previous).embeddings("document")
                earlier = previous = candidate if uris.exists(candidate) else None
            rows = self.inputs.docs if side == "document" else self.inputs.queries
            output, errors = self.layout.embeddings(side), self.layout.embed_errors(side)
            sides.append(embed.SideInput(side, files, rows, output, errors, earlier))
        has_media = any(
            media_columns_with_values(s.files, [f"{PREFIX[s.side]}_{m}" for m in c.MEDIA_MODALITIES])
            for s in sides
        )
        counts = embed.embed_sides(
            sides,
            spec=self.cfg.embedder,
            pool=self.cfg.embed_pool,
            run_id=self.layout.run_id,
            rows_per_partition=self.cfg.rows_per_partition,
            driver_rows=self.cfg.driver_rows,
            media=self.cfg.media if has_media else None,
            worker_cls=worker_cls,
        )
        return {
            name: {**counts[EMBED_STAGES[name]], "previous": previous if name == "embed_corpus" else None}
            for name in todo
        }

    def retrieve(self) -> dict:
        queries = retrieve(
            corpus_embeddings=self.layout.embeddings("document"),
            query_embeddings=self.layout.embeddings("query"),
            corpus_files=self.inputs.corpus_files,
            query_files=self.inputs.query_files,
            output=self.layout.candidates,
            k=self.cfg.retrieve_k,
            metric=self.cfg.metric,
            block_rows=self.cfg.retrieve_block_rows,
            rows_per_partition=self.cfg.rows_per_partition,
            corpus_rows=self.inputs.docs,
            driver_rows=self.cfg.driver_rows,
        )
        if not queries:
            return {"queries": 0, "candidates": 0, "clustered_by_query": False}
        return {
            "queries": queries,
            "candidates": uris.count_rows(uris.list_parquet(self.layout.candidates)),
            "clustered_by_query": clustered_by_query(self.layout.candidates),
        }

    def rerank(self, cache: ScoreCache, worker_cls) -> dict:
        rcfg = self.cfg.rerank_config(self.layout.candidates, self.layout.run_dir, self.layout.run_id)
        manifest = run_rerank(
            rcfg, worker_cls, extra_stages=[cache.stage], manifest_name=RERANK_MANIFEST, keep_scored=True
        )
        keys = ("counts", "errors", "tokens", "timings", "throughput", "model", "scoring_actor", "ranking")
        return {k: manifest.get(k) for k in keys}

    def evaluate(self) -> dict:
        try:
            from pipelines.evaluate.pipeline import evaluate_runs
        except ImportError as exc:
            raise RuntimeError(
                f"--qrels needs pipelines.evaluate.pipeline.evaluate_runs, which cannot be imported: {exc}"
            ) from exc
        runs = {"retrieval": self.layout.candidates, "reranked": self.layout.run_dir}
        metrics = evaluate_runs(
            qrels_path(self.cfg),
            runs,
            output=self.layout.evaluation,
            ks=EVAL_KS,
            driver_rows=self.cfg.driver_rows,
        )
        return {
            "output": self.layout.evaluation,
            "mean": {n: r.get("mean") for n, r in metrics.get("runs", {}).items()},
        }
