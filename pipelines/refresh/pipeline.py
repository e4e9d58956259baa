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

import hashlib
import json
import time
import uuid
from dataclasses import asdict, dataclass

from actors.embedder import PREFIX, EmbedderSpec, EmbedWorker, Side
from actors.media.loader import MediaSpec
from actors.pool import PoolSpec
from actors.reranker.spec import RerankerSpec
from actors.reranker.worker import RerankWorker
from pipelines.inputs.sources import FileFormat, media_columns_with_values
from pipelines.refresh import embed
from pipelines.refresh.inputs import Inputs, check_inputs, check_settings, qrels_path, stage_inputs
from pipelines.refresh.manifest import night_manifest
from pipelines.refresh.publish import (
    RunLayout,
    finished,
    mark_finished,
    mark_started,
    publish_decision,
    publish_latest,
    read_latest,
)
from pipelines.refresh.retrieve import METRICS, Metric, retrieve
from pipelines.refresh.score_cache import ScoreCache
from pipelines.rerank.config import Mode, RerankConfig, check_run_id
from pipelines.rerank.run import run_rerank
from pipelines.rerank.trec import check_tag, write_run_file
from pipelines.runs import progress
from pipelines.runs.checkpoint import Checkpoint
from pipelines.runs.info import resolved_dtype, value_key
from pipelines.runs.model_access import check_remote_code, warn_remote_code
from pipelines.storage import uris
from pipelines.storage.tables import DRIVER_ROWS, clustered_by_query
from schemas import columns as c
from schemas.settings import SettingError, at_least, one_of, setting, validate_nested
from schemas.tables import InputError

RERANK_MANIFEST = "_rerank_manifest.json"
EMBED_STAGES: dict[str, Side] = {"embed_corpus": "document", "embed_queries": "query"}
EVAL_KS = [1, 3, 5, 10]


@dataclass(frozen=True, kw_only=True)
class RefreshConfig:
    """Everything one nightly refresh needs. `jobs.refresh` generates one flag per field: the embedder and
    its pool under `--embed-*`, the reranker and its pool under `--rerank-*` (every setting `jobs.rerank`
    has), the media limits as in `jobs.rerank`."""

    corpus: str | None = setting(
        None,
        help="corpus (doc_id + doc_text/_image/_audio/_video; Parquet, JSON Lines or CSV): a file, a "
        "directory of shards or a glob; local or s3://. Required unless --beir",
    )
    queries: str | None = setting(
        None, help="queries (query_id + query_text/_image/_audio/_video). Required unless --beir"
    )
    beir: str | None = setting(
        None,
        metavar="DIR",
        help="a BEIR dataset directory (corpus.jsonl, queries.jsonl, qrels/<split>.tsv): corpus, queries and "
        "judgements come from it, instead of --corpus, --queries and --qrels",
    )
    split: str = setting(
        "test", help="with --beir: the judgements DIR/qrels/<split>.tsv; only its queries are retrieved"
    )
    format: FileFormat = setting(
        "auto", help="format of --corpus and --queries: parquet, jsonl or csv; auto: from the file extension"
    )
    columns: tuple[str, ...] | None = setting(
        None,
        flag="column",
        action="append",
        metavar="COLUMN=INPUT",
        help="read the contract column COLUMN (doc_id, doc_text, query_id, query_text, ...) from the input "
        "column INPUT, e.g. doc_text=body; repeatable",
    )
    keep_columns: tuple[str, ...] = setting(
        (),
        metavar="A,B|*",
        help="candidate columns carried into ranked/, e.g. candidate_text (*: all of them)",
    )
    output: str = setting(metavar="ROOT", help="ROOT (local or s3://): runs/<run_id>/, LATEST, score_cache/")
    embedder: EmbedderSpec = setting(prefix="embed-", help="embedding")
    embed_pool: PoolSpec = setting(default_factory=PoolSpec, prefix="embed-", help="embedding actor pool")
    reranker: RerankerSpec = setting(prefix="rerank-", help="reranking")
    rerank_pool: PoolSpec = setting(default_factory=PoolSpec, prefix="rerank-", help="reranking actor pool")
    media: MediaSpec = setting(
        default_factory=MediaSpec, help="media (fetch and decode limits, for documents and pairs)"
    )
    retrieve_k: int = setting(100, help="candidates retrieved per query")
    metric: Metric = setting("cosine", help="retrieval similarity: cosine, or dot for normalised embeddings")
    retrieve_block_rows: int = setting(65536, help="corpus rows scored against every query in one task")
    top_k: int | None = setting(
        None, help="keep only the best K reranked candidates per query (default: all)"
    )
    run_id: str | None = setting(
        None, help="run id (default: a timestamp); re-running an id resumes it and never duplicates rows"
    )
    qrels: str | None = setting(
        None,
        help="relevance judgements (Parquet, TREC qrels or BEIR TSV): evaluate retrieval and reranking into "
        "runs/<run_id>/eval/",
    )
    rows_per_partition: int = setting(50000, help="rows per shuffle partition of the joins and merges")
    driver_rows: int = setting(
        DRIVER_ROWS,
        help="inputs of at most this many rows (corpus for retrieval, score-cache lookup and append, evaluated "
        "runs) are handled in the driver, not as Ray Data jobs; the same results. 0: always on the cluster",
    )
    mode: Mode | None = setting(
        None,
        help="when ROOT already holds this --run-id: error (refuse), overwrite (redo it from scratch), resume "
        "(continue it with the same settings). Default: resume",
    )
    max_error_rate: float = setting(
        0.01,
        help="a night whose rerank failed/pairs exceeds this exits 3 and is not published as LATEST",
    )
    rank_on_driver_rows: int = setting(
        RerankConfig.__dataclass_fields__["rank_on_driver_rows"].default,
        help="the rerank stage's --rank-on-driver-rows",
    )
    trec_run: bool = setting(
        False, help="also write runs/<run_id>/run.trec: the ranked rows as a TREC run file (tag: the run id)"
    )

    def validate(self) -> RefreshConfig:
        at_least(self, 1, "retrieve_k", "retrieve_block_rows", "rows_per_partition", "top_k")
        at_least(self, 0, "max_error_rate", "driver_rows", "rank_on_driver_rows")
        one_of(self, "metric", METRICS)
        check_run_id(self.run_id)
        check_tag(self.run_id, self.trec_run)
        check_settings(self)
        if self.qrels is not None and not uris.exists(self.qrels):
            raise SettingError("qrels", f"{self.qrels}: no such file")
        validate_nested(self)
        for spec, owner in ((self.embedder, "embedder"), (self.reranker, "reranker")):
            check_remote_code(spec, owner)
            warn_remote_code(spec)
        return self

    def rerank_config(self, pairs: str, output: str, run_id: str | None = None) -> RerankConfig:
        """The rerank stage of this night: this config's reranker, pool and media limits over `pairs`."""
        return RerankConfig(
            pairs=pairs,
            output=output,
            reranker=self.reranker,
            pool=self.rerank_pool,
            media=self.media,
            top_k=self.top_k,
            keep_columns=self.keep_columns,
            run_id=run_id,
            max_error_rate=self.max_error_rate,
            rank_on_driver_rows=self.rank_on_driver_rows,
        )

    def key(self) -> str:
        """What a resumed run must share with the run it resumes: everything but the run id and the
        settings that change no row (where small tables are handled)."""
        payload = {
            k: v
            for k, v in asdict(self).items()
            if k not in ("run_id", "mode", "driver_rows", "rank_on_driver_rows", "trec_run")
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


def latest_run(root: str) -> str | None:
    """The run `ROOT/LATEST` names (what readers should use), or None before the first refresh."""
    return read_latest(root)


def refuse_existing_run(cfg: RefreshConfig, layout: RunLayout) -> None:
    """`--mode error` on a run ROOT already holds: refused (a job with a `--run-id` checks this before it
    starts or joins Ray, and again when the run begins)."""
    if cfg.mode == "error" and uris.exists(layout.run_dir):
        raise InputError(f"{layout.run_dir} already exists (--mode error); choose another --run-id")


def run_refresh(cfg: RefreshConfig, *, embed_worker_cls=EmbedWorker, rerank_worker_cls=RerankWorker) -> dict:
    """Run (or resume) one nightly refresh and publish it. Returns the manifest. Assumes `ray.init`."""
    cfg.validate()
    inputs = check_inputs(cfg)
    layout = RunLayout(cfg.output, cfg.run_id or new_run_id())
    refuse_existing_run(cfg, layout)
    if uris.exists(layout.run_dir) and cfg.mode == "overwrite":
        uris.remove(layout.run_dir)
    if uris.exists(layout.manifest):
        manifest = uris.read_json(layout.manifest)
        if manifest.get("published", True) and publish_decision(layout) is None:
            publish_latest(layout.root, layout.run_id)  # a run killed between its manifest and LATEST
        return {**manifest, "resumed": "already complete"}
    night = _Night(cfg, inputs, layout, read_latest(cfg.output))
    return night.run(embed_worker_cls, rerank_worker_cls)


class _Night:
    """One run's stages, each skipped when this run already finished it."""

    def __init__(self, cfg: RefreshConfig, inputs: Inputs, layout: RunLayout, previous: str | None):
        self.cfg, self.inputs, self.layout = cfg, inputs, layout
        self.previous = previous if previous != layout.run_id else None
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
            identity=value_key(cfg.reranker, dtype=resolved_dtype(cfg.reranker, cfg.rerank_pool)),
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
        if not_published is None:
            publish_latest(cfg.output, layout.run_id)
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
