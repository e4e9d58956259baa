"""The nightly refresh: retrieve with a bi-encoder, rerank with a CrossEncoder, publish the run.

embed corpus (incremental) ─► embed queries ─► exact top-k retrieval ─► candidates/ ─► rerank (cached
scores skipped) ─► append new scores to the cache ─► evaluate (with qrels) ─► manifest.json ─► LATEST

Each stage records its result under `runs/<run_id>/_stages/`; re-running a run id skips finished stages
and redoes the unfinished one from scratch, so no row is ever written twice. LATEST moves only after the
manifest is written: a night that fails anywhere leaves the previous run published.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import asdict, dataclass, field

from actors.embedder import EmbedderSpec, EmbedWorker, Side
from actors.media_loader import MediaSpec
from actors.reranker import RerankWorker
from pipelines import embed, io
from pipelines.embed import PoolOptions
from pipelines.publish import RunLayout, finished, mark_finished, publish_latest, read_latest
from pipelines.rerank import RerankConfig, media_columns_with_values, run_rerank
from pipelines.retrieve import METRICS, Metric, retrieve
from pipelines.run_info import library_versions, model_fingerprint
from pipelines.score_cache import ScoreCache
from schemas import columns as c
from schemas.tables import InputError, check_corpus_schema, check_queries_schema

RERANK_MANIFEST = "_rerank_manifest.json"
EVAL_KS = [1, 3, 5, 10]


@dataclass(frozen=True)
class RefreshConfig:
    """Everything one nightly refresh needs; the flags of `jobs.refresh` map onto it one to one."""

    corpus: str  # corpus Parquet: doc_id + doc_text/_image/_audio/_video
    queries: str  # queries Parquet: query_id + query_text/_image/_audio/_video
    embedder: str  # SentenceTransformer: directory, hub id or s3:// prefix
    reranker: str  # CrossEncoder (or causal / multimodal LM directory), as `jobs.rerank --model`
    output_root: str  # ROOT: runs/<run_id>/, LATEST, score_cache/
    retrieve_k: int = 100  # candidates retrieved per query
    top_k: int | None = None  # keep only the best K reranked candidates per query
    run_id: str | None = None  # re-running a run id resumes it
    qrels: str | None = None  # relevance judgements: evaluate retrieval and reranking into runs/<id>/eval
    metric: Metric = "cosine"  # retrieval similarity: cosine, or dot for already-normalised models
    query_prompt_name: str | None = None  # embedder prompt name for queries (default: the model's "query")
    query_prompt: str | None = None  # literal query prompt (instead of a name)
    document_prompt_name: str | None = None  # embedder prompt name for documents (default: document/passage)
    document_prompt: str | None = None  # literal document prompt
    normalize_embeddings: bool = False  # L2-normalise stored embeddings
    embed_batch_tokens: int = 16384  # token budget of one embedding micro-batch (padded tokens)
    embed_max_length: int | None = None  # truncate embedder inputs to N tokens
    embed_block_rows: int = 1024  # rows per embedding actor call
    embed_actors: int = 1  # embedding actors (one model replica each)
    retrieve_block_rows: int = 65536  # corpus rows scored against all queries in one task
    rerank_prompt: str | None = None  # reranker prompt (default: the model's)
    rerank_max_length: int | None = None  # truncate pairs to N tokens
    rerank_batch_tokens: int = 16384  # token budget of one reranker micro-batch
    rerank_block_rows: int = 2048  # rows per reranker actor call
    rerank_actors: int = 1  # reranker actors
    gpus_per_actor: float | None = None  # GPUs per model actor (default: 1 when the cluster has GPUs)
    cpus_per_actor: float = 1.0  # CPUs reserved per model actor
    torch_threads: int | None = None  # torch intra-op threads per actor (CPU runs)
    dtype: str = "auto"  # model weights dtype: auto, float32, bfloat16, float16
    rows_per_partition: int = 50000  # rows per shuffle partition (joins, merges)
    media: MediaSpec = field(default_factory=MediaSpec)  # fetch/decode limits for media documents and pairs

    def validate(self) -> RefreshConfig:
        for name in (
            "retrieve_k",
            "embed_block_rows",
            "embed_actors",
            "retrieve_block_rows",
            "rows_per_partition",
        ):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.metric not in METRICS:
            raise InputError(f"--metric {self.metric!r} is not one of {list(METRICS)}")
        if self.run_id is not None and (not self.run_id or "/" in self.run_id or self.run_id.startswith(".")):
            raise InputError(f"--run-id {self.run_id!r}: use a plain name (no '/', not starting with '.')")
        if self.qrels is not None and not io.exists(self.qrels):
            raise InputError(f"--qrels {self.qrels}: no such file")
        self.embedder_spec().validate()
        self.rerank_config("unused", "unused").validate()
        return self

    def embedder_spec(self) -> EmbedderSpec:
        return EmbedderSpec(
            model=self.embedder,
            batch_tokens=self.embed_batch_tokens,
            max_length=self.embed_max_length,
            dtype=self.dtype,
            torch_threads=self.torch_threads,
            query_prompt_name=self.query_prompt_name,
            query_prompt=self.query_prompt,
            document_prompt_name=self.document_prompt_name,
            document_prompt=self.document_prompt,
            normalize=self.normalize_embeddings,
        )

    def embed_pool(self) -> PoolOptions:
        return PoolOptions(self.embed_actors, self.gpus_per_actor, self.cpus_per_actor, self.embed_block_rows)

    def rerank_config(self, pairs: str, output: str, run_id: str | None = None) -> RerankConfig:
        return RerankConfig(
            pairs=pairs,
            model=self.reranker,
            output=output,
            top_k=self.top_k,
            prompt=self.rerank_prompt,
            max_length=self.rerank_max_length,
            batch_tokens=self.rerank_batch_tokens,
            block_rows=self.rerank_block_rows,
            actors=self.rerank_actors,
            gpus_per_actor=self.gpus_per_actor,
            cpus_per_actor=self.cpus_per_actor,
            torch_threads=self.torch_threads,
            dtype=self.dtype,
            run_id=run_id,
            media=self.media,
        )

    def key(self) -> str:
        """What a resumed run must share with the run it resumes: everything but the run id."""
        payload = {k: v for k, v in asdict(self).items() if k != "run_id"}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Inputs:
    corpus_files: list[str]
    query_files: list[str]
    docs: int
    queries: int


def check_inputs(cfg: RefreshConfig) -> Inputs:
    """Driver-side validation before any cluster work: files exist and every schema fits the contract."""
    corpus, queries = io.list_parquet(cfg.corpus), io.list_parquet(cfg.queries)
    for f in corpus:
        check_corpus_schema(io.read_schema(f), where=f)
    for f in queries:
        check_queries_schema(io.read_schema(f), where=f)
    inputs = Inputs(corpus, queries, io.count_rows(corpus), io.count_rows(queries))
    for name, rows in (("--corpus", inputs.docs), ("--queries", inputs.queries)):
        if rows == 0:
            raise InputError(f"{name} {getattr(cfg, name[2:])}: the input has no rows")
    return inputs


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


def latest_run(root: str) -> str | None:
    """The run `ROOT/LATEST` names (what readers should use), or None before the first refresh."""
    return read_latest(root)


def run_refresh(cfg: RefreshConfig, *, embed_worker_cls=EmbedWorker, rerank_worker_cls=RerankWorker) -> dict:
    """Run (or resume) one nightly refresh and publish it. Returns the manifest. Assumes `ray.init`."""
    cfg.validate()
    inputs = check_inputs(cfg)
    layout = RunLayout(cfg.output_root, cfg.run_id or new_run_id())
    if io.exists(layout.manifest):
        manifest = io.read_json(layout.manifest)
        _finish_publishing(layout, manifest)
        return {**manifest, "resumed": "already complete"}
    night = _Night(cfg, inputs, layout, read_latest(cfg.output_root))
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
        result = finished(self.layout, name, self.key)
        if result is not None:
            self.resumed.append(name)
            return result
        t0 = time.perf_counter()
        result = fn()
        self.timings[f"{name}_s"] = round(time.perf_counter() - t0, 3)
        mark_finished(self.layout, name, self.key, result)
        return result

    def run(self, embed_worker_cls, rerank_worker_cls) -> dict:
        started = time.perf_counter()
        cfg, layout = self.cfg, self.layout
        docs = self.stage("embed_corpus", lambda: self.embed("document", embed_worker_cls))
        queries = self.stage("embed_queries", lambda: self.embed("query", embed_worker_cls))
        if docs["rows"] == docs["failed"]:
            raise InputError(f"no document could be embedded (see {layout.embed_errors('document')})")
        retrieval = self.stage("retrieve", self.retrieve)
        if retrieval["candidates"] == 0:
            raise InputError(
                f"no candidates: no query could be embedded (see {layout.embed_errors('query')})"
            )
        cache = ScoreCache(
            root=layout.score_cache,
            reranker=cfg.reranker,
            revision=model_fingerprint(cfg.reranker)["revision"],
            prompt=cfg.rerank_prompt,
            run_id=layout.run_id,
            pairs=retrieval["candidates"],
            rows_per_partition=cfg.rows_per_partition,
        )
        rerank = self.stage("rerank", lambda: self.rerank(cache, rerank_worker_cls))
        cached = self.stage("score_cache", lambda: cache.append(io.join(layout.run_dir, "_scored")))
        io.remove(io.join(layout.run_dir, "_scored"))
        io.remove(io.join(layout.run_dir, "_scored.json"))
        evaluation = self.stage("evaluate", self.evaluate) if cfg.qrels else None
        self.timings["total_s"] = round(time.perf_counter() - started, 3)
        manifest = self.manifest(docs, queries, retrieval, rerank, cached, evaluation)
        io.write_json(layout.manifest, manifest)
        publish_latest(cfg.output_root, layout.run_id)
        return manifest

    def embed(self, side: Side, worker_cls) -> dict:
        files = self.inputs.corpus_files if side == "document" else self.inputs.query_files
        prefix = "doc" if side == "document" else "query"
        previous = None
        if side == "document" and self.previous is not None:
            candidate = RunLayout(self.cfg.output_root, self.previous).embeddings("document")
            previous = candidate if io.exists(candidate) else None
        media_cols = [f"{prefix}_{m}" for m in c.MEDIA_MODALITIES]
        output = self.layout.embeddings(side)
        embed.embed_side(
            files,
            side=side,
            spec=self.cfg.embedder_spec(),
            pool=self.cfg.embed_pool(),
            output=output,
            run_id=self.layout.run_id,
            rows=self.inputs.docs if side == "document" else self.inputs.queries,
            rows_per_partition=self.cfg.rows_per_partition,
            previous=previous,
            media=self.cfg.media if media_columns_with_values(files, media_cols) else None,
            worker_cls=worker_cls,
        )
        embed.write_errors(output, side, self.layout.embed_errors(side))
        return {**embed.counts(output, side, self.layout.run_id), "previous": previous}

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
        )
        candidates = io.count_rows(io.list_parquet(self.layout.candidates)) if queries else 0
        return {"queries": queries, "candidates": candidates}

    def rerank(self, cache: ScoreCache, worker_cls) -> dict:
        rcfg = self.cfg.rerank_config(self.layout.candidates, self.layout.run_dir, self.layout.run_id)
        manifest = run_rerank(
            rcfg, worker_cls, extra_stages=[cache.stage], manifest_name=RERANK_MANIFEST, keep_scored=True
        )
        return {k: manifest.get(k) for k in ("counts", "tokens", "timings", "throughput", "model")}

    def evaluate(self) -> dict:
        try:
            from pipelines.evaluate import evaluate_runs
        except ImportError as exc:
            raise RuntimeError(
                f"--qrels needs pipelines.evaluate.evaluate_runs, which cannot be imported: {exc}"
            ) from exc
        runs = {"retrieval": self.layout.candidates, "reranked": self.layout.run_dir}
        metrics = evaluate_runs(self.cfg.qrels, runs, output=self.layout.evaluation, ks=EVAL_KS)
        return {
            "output": self.layout.evaluation,
            "mean": {n: r.get("mean") for n, r in metrics.get("runs", {}).items()},
        }

    def manifest(self, docs, queries, retrieval, rerank, cached, evaluation) -> dict:
        cfg = self.cfg
        score_s = (rerank.get("timings") or {}).get("score_s")
        return {
            "run_id": self.layout.run_id,
            "kind": "refresh",
            "previous_run": self.previous,
            "root": cfg.output_root,
            "config": asdict(cfg),
            "input_files": {"corpus": self.inputs.corpus_files, "queries": self.inputs.query_files},
            "embedder": {"id": cfg.embedder, **model_fingerprint(cfg.embedder)},
            "reranker": {"id": cfg.reranker, **model_fingerprint(cfg.reranker)},
            "counts": {
                "docs": docs["rows"],
                "docs_embedded": docs["embedded"],
                "docs_reused": docs["reused"],
                "docs_failed": docs["failed"],
                "queries": queries["rows"],
                "queries_failed": queries["failed"],
                "candidates": retrieval["candidates"],
                "cache_hits": cached["cache_hits"],
                "scored": cached["scored"],
                "rerank_failed": rerank["counts"]["failed"],
                "ranked_rows": rerank["counts"]["ranked_rows"],
            },
            "rerank": rerank,
            "evaluation": evaluation,
            "timings": self.timings,
            "throughput": {"pairs_per_s": cached["scored"] / score_s if score_s else None},
            "resumed_stages": self.resumed,
            "outputs": {
                "candidates": self.layout.candidates,
                "ranked": io.join(self.layout.run_dir, "ranked"),
                "errors": io.join(self.layout.run_dir, "errors"),
                "embeddings": self.layout.embeddings("document"),
            },
            "versions": library_versions(),
        }


def _finish_publishing(layout: RunLayout, manifest: dict) -> None:
    """A run killed between its manifest and LATEST: publish it now, unless another run was published
    since (LATEST no longer names the run this one followed)."""
    latest = read_latest(layout.root)
    if latest != layout.run_id and latest == manifest.get("previous_run"):
        publish_latest(layout.root, layout.run_id)
