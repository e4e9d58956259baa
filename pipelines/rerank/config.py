"""The rerank job's configuration: one typed config (every flag of `jobs.rerank` is a field), and where a
run's output lives."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from actors.media.loader import MediaSpec
from actors.pool import PoolSpec
from actors.reranker.spec import RerankerSpec
from pipelines.inputs.sources import FORMATS, FileFormat, parse_columns
from pipelines.rerank.fuse import (
    FUSE_HELP,
    FUSE_WEIGHT_HELP,
    FuseMethod,
    Fusion,
    fusion_of,
    resolve_weight,
)
from pipelines.rerank.fuse import check_settings as check_fusion
from pipelines.rerank.trec import check_tag
from pipelines.rerank.validate import check_keep_columns
from pipelines.runs.model_access import check_remote_code, warn_remote_code
from pipelines.storage import uris
from schemas import columns as c
from schemas.settings import SettingError, at_least, one_of, setting, validate_nested
from schemas.tables import CORPUS_SCHEMA, PAIRS_SCHEMA, QUERIES_SCHEMA

Mode = Literal["error", "overwrite", "resume"]


def check_run_id(run_id: str | None) -> None:
    """A run id names a folder: a plain name, no '/', not starting with '.'."""
    if run_id is not None and (not run_id or "/" in run_id or run_id.startswith(".")):
        raise SettingError("run_id", f"{run_id!r}: use a plain name (no '/', not starting with '.')")


@dataclass(frozen=True, kw_only=True)
class RerankConfig:
    """Everything one rerank run needs. `jobs.rerank` generates one flag per field (nested specs
    flattened); `jobs.refresh` holds the same specs under `--rerank-*`."""

    pairs: str | None = setting(
        None,
        help="pairs (Parquet, JSON Lines or CSV): a file, a directory of shards or a glob; local or s3:// "
        "(or a first-stage --run instead)",
    )
    run: str | None = setting(
        None,
        metavar="URI",
        help="a first-stage run instead of pairs: TREC run text (qid Q0 docid rank score tag), or Parquet / "
        "JSON Lines rows (query_id, doc_id or candidate_id, score, rank), joined with --corpus and "
        "--queries (or --beir); its score and rank become retrieval_score / retrieval_rank",
    )
    corpus: str | None = setting(
        None, help="with --run: the documents (doc_id, doc_text, doc_image, ...), Parquet, JSON Lines or CSV"
    )
    queries: str | None = setting(
        None, help="with --run: the queries (query_id, query_text, ..., optional instruction)"
    )
    beir: str | None = setting(
        None, metavar="DIR", help="with --run: a BEIR directory (corpus.jsonl, queries.jsonl, qrels/)"
    )
    split: str = setting("test", help="with --beir: the split whose judged queries are read")
    depth: int | None = setting(
        None,
        metavar="K",
        help="with --run: each query's K best rows by the run's rank, taken before the join (default: all)",
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
    lease_ttl_s: float = setting(
        60.0,
        flag="lease-ttl",
        help="seconds without a heartbeat after which another driver may take the run over",
    )
    lease_heartbeat_s: float = setting(
        10.0,
        flag="lease-heartbeat",
        help="seconds between the driver's lease renewals (well under --lease-ttl)",
    )
    trec_run: bool = setting(
        False,
        help="also write <output>/run.trec: the ranked rows as a TREC run file (tag: the run id; the score "
        "written is fused_score with --fuse)",
    )
    fuse: FuseMethod | None = setting(None, help=FUSE_HELP)
    fuse_weight: float | None = setting(None, metavar="W", help=FUSE_WEIGHT_HELP)

    def validate(self) -> RerankConfig:
        at_least(self, 1, "top_k")
        at_least(self, 0, "max_error_rate", "rank_on_driver_rows")
        one_of(self, "format", FORMATS)
        check_run_id(self.run_id)
        check_tag(self.run_id, self.trec_run)
        self._check_input()
        at_least(self, 1, "depth")
        at_least(self, 0.1, "lease_ttl_s", "lease_heartbeat_s")
        if self.lease_heartbeat_s >= self.lease_ttl_s:
            raise SettingError(
                "lease_heartbeat_s", f"{self.lease_heartbeat_s:g} s: must be under --lease-ttl"
            )
        check_keep_columns(self.keep_columns)
        check_fusion(self.fuse, self.fuse_weight)
        validate_nested(self)
        check_remote_code(self.reranker, "reranker")
        warn_remote_code(self.reranker)
        return self

    @property
    def fusion(self) -> Fusion | None:
        """How `rank` orders: None by score; else by fused score (the weight resolved, `with_fusion_weight`)."""
        return fusion_of(self.fuse, self.fuse_weight)

    def ranking_identity(self) -> dict:
        """What orders and cuts ranked/ besides the scores, for the run identity: --top-k, and with --fuse
        the method and weight (absent without, so an unfused run's identity is as it always was)."""
        fused = {"fusion": [self.fuse, self.fuse_weight]} if self.fuse is not None else {}
        return {"top_k": self.top_k, **fused}

    def with_fusion_weight(self) -> RerankConfig:
        """This config with the linear weight resolved (`--fuse-weight`, else the model's `fusion.json`),
        so the manifest's config records the weight used; an InputError when there is none."""
        weight = resolve_weight(self.fuse, self.fuse_weight, self.reranker.model, self.reranker.revision)
        return replace(self, fuse_weight=weight)

    def _check_input(self) -> None:
        """Pairs, or a run with its corpus and queries (or a BEIR directory): exactly one of the two."""
        if (self.pairs is None) == (self.run is None):
            raise SettingError("pairs", "give --pairs, or a first-stage --run with --corpus and --queries")
        if self.pairs is not None:
            for name in ("corpus", "queries", "beir", "depth"):
                if getattr(self, name) is not None:
                    raise SettingError(name, "only with --run (--pairs are joined already)")
            parse_columns(self.columns, PAIRS_SCHEMA.names)
            return
        if self.beir is not None:
            for name in ("corpus", "queries", "columns"):
                if getattr(self, name):
                    raise SettingError(
                        name, "not with --beir: the BEIR directory holds the corpus and queries"
                    )
        elif self.corpus is None or self.queries is None:
            raise SettingError(
                "corpus" if self.corpus is None else "queries", "required with --run (or --beir DIR)"
            )
        parse_columns(self.columns, (*CORPUS_SCHEMA.names, *QUERIES_SCHEMA.names, c.INSTRUCTION))


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
        """JSON Lines or CSV pairs copied to Parquet, or a first-stage run joined into pairs, for the
        resumable reader (see `pairs_files`)."""
        return uris.join(self.root, "_input")
