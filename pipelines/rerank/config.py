"""The rerank job's configuration: one typed config (every flag of `jobs.rerank` is a field), and where a
run's output lives."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from actors.media.loader import MediaSpec
from actors.pool import PoolSpec
from actors.reranker.spec import RerankerSpec
from pipelines.inputs.sources import FORMATS, FileFormat, parse_columns
from pipelines.rerank.trec import check_tag
from pipelines.rerank.validate import check_keep_columns
from pipelines.runs.model_access import check_remote_code, warn_remote_code
from pipelines.storage import uris
from schemas.settings import SettingError, at_least, one_of, setting, validate_nested
from schemas.tables import PAIRS_SCHEMA

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
