"""The nightly refresh's configuration: one typed config (every flag of `jobs.refresh` is a field), and
the run identity a resumed night is held to."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import asdict, dataclass, replace

from actors.embedder import EmbedderSpec
from actors.media.loader import MediaSpec
from actors.pool import PoolSpec
from actors.reranker.spec import RerankerSpec
from pipelines.inputs.sources import FileFormat
from pipelines.refresh.inputs import check_settings
from pipelines.refresh.publish import RunLayout, read_latest
from pipelines.refresh.retrieve import METRICS, Metric
from pipelines.rerank.config import Mode, RerankConfig, check_run_id
from pipelines.rerank.fuse import FUSE_HELP, FUSE_WEIGHT_HELP, FuseMethod, resolve_weight
from pipelines.rerank.fuse import check_settings as check_fusion
from pipelines.rerank.trec import check_tag
from pipelines.runs.info import model_fingerprint, resolved_dtype, value_key
from pipelines.runs.lease import input_stats
from pipelines.runs.model_access import check_remote_code, warn_remote_code
from pipelines.storage import uris
from pipelines.storage.tables import DRIVER_ROWS
from schemas.settings import SettingError, at_least, one_of, setting, validate_nested
from schemas.tables import InputError


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
        None,
        help="queries (query_id + query_text/_image/_audio/_video, and an optional instruction: that query's "
        "prompt for the reranker, as jobs.rerank --run reads it). Required unless --beir",
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
        False,
        help="also write runs/<run_id>/run.trec: the ranked rows as a TREC run file (tag: the run id; the "
        "score written is fused_score with --fuse)",
    )
    fuse: FuseMethod | None = setting(None, help=FUSE_HELP)
    fuse_weight: float | None = setting(None, metavar="W", help=FUSE_WEIGHT_HELP)
    lease_ttl_s: float = setting(
        RerankConfig.__dataclass_fields__["lease_ttl_s"].default,
        flag="lease-ttl",
        help="seconds without a heartbeat after which another driver may take the night over",
    )
    lease_heartbeat_s: float = setting(
        RerankConfig.__dataclass_fields__["lease_heartbeat_s"].default,
        flag="lease-heartbeat",
        help="seconds between the driver's lease renewals (well under --lease-ttl)",
    )

    def validate(self) -> RefreshConfig:
        at_least(self, 1, "retrieve_k", "retrieve_block_rows", "rows_per_partition", "top_k")
        at_least(self, 0, "max_error_rate", "driver_rows", "rank_on_driver_rows")
        one_of(self, "metric", METRICS)
        check_run_id(self.run_id)
        check_tag(self.run_id, self.trec_run)
        check_settings(self)
        check_fusion(self.fuse, self.fuse_weight)
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
            lease_ttl_s=self.lease_ttl_s,
            lease_heartbeat_s=self.lease_heartbeat_s,
            fuse=self.fuse,
            fuse_weight=self.fuse_weight,
        )

    def with_fusion_weight(self) -> RefreshConfig:
        """This config with the linear weight resolved (`--fuse-weight`, else the reranker's `fusion.json`),
        so the manifest and the night's identity record the weight used; an InputError when there is none."""
        weight = resolve_weight(self.fuse, self.fuse_weight, self.reranker.model, self.reranker.revision)
        return replace(self, fuse_weight=weight)

    def key(self) -> str:
        """What a resumed run must share with the run it resumes: everything but the run id and the
        settings that change no row (where small tables are handled)."""
        payload = _row_settings(self)
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def cache_identity(self) -> str:
        """The score cache's reranker identity: the weights and every setting that changes a score,
        the media settings that do (the audio sample rate) among them."""
        dtype = resolved_dtype(self.reranker, self.rerank_pool)
        return value_key(self.reranker, dtype=dtype, **self.media.score_settings())

    def identity(self, input_files: list[str], instructions: str | None = None) -> dict:
        """What a resumed night is held to, by name (a change is named in the refusal): every setting that
        changes a row, the input files (sizes and modification times or ETags), the queries' instructions
        (`instructions`: their digest, `Inputs.instructions`; None without the column) and both models'
        weights."""
        fields = _row_settings(self)
        fields["inputs"] = input_stats(input_files)
        fields["instructions"] = instructions
        for name, spec in (("embedder", self.embedder), ("reranker", self.reranker)):
            fields[f"{name}_weights"] = model_fingerprint(spec.model, spec.revision).get("fingerprint")
        return fields


# Settings that decide how or where a night works, never which rows it writes.
NO_ROW_CHANGES = (
    "run_id",
    "mode",
    "driver_rows",
    "rank_on_driver_rows",
    "trec_run",
    "lease_ttl_s",
    "lease_heartbeat_s",
)


def _row_settings(cfg: RefreshConfig) -> dict:
    """The settings that change rows, by name; without --fuse its two settings are left out, so a night
    that does not fuse keeps the key and identity it always had."""
    settings = {k: v for k, v in asdict(cfg).items() if k not in NO_ROW_CHANGES}
    if cfg.fuse is None:
        settings = {k: v for k, v in settings.items() if k not in ("fuse", "fuse_weight")}
    return settings


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
