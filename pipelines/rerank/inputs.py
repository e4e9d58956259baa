"""The rerank job's input, checked on the driver before any cluster work: pairs (Parquet, JSON Lines or
CSV), and the Parquet files the resumable reader scores."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from actors.media.loader import MEDIA, MEDIA_COLUMNS
from actors.reranker.worker import SCORE
from pipelines.inputs.first_stage import FirstStage, open_first_stage, pairs_schema, stage_run_pairs
from pipelines.inputs.sources import (
    FileFormat,
    Source,
    media_columns_with_values,
    open_source,
    parse_columns,
    stage_copy,
)
from pipelines.rerank.config import OutputLayout, RerankConfig
from pipelines.rerank.fuse import check_columns
from pipelines.rerank.rank import RANK
from pipelines.rerank.validate import VALIDATE, resolve_keep
from schemas import columns as c
from schemas.stages import check_chain
from schemas.tables import PAIRS_SCHEMA, InputError, check_pairs_schema

# The stages `run_rerank` wires, in order. The media stage is skipped when no media column holds a value;
# nothing after it needs its columns, so one chain covers both.
RERANK_CHAIN = (VALIDATE, MEDIA, SCORE, RANK)


@dataclass(frozen=True)
class PairsPlan:
    """What the driver learned about the pairs before any cluster work. `rename`: (input column, contract
    column) pairs from `--column`; `keep`: the kept input columns (`*` expanded); `media`: whether the
    media stage runs (a media column holds a value)."""

    keep: tuple[str, ...] = ()
    media: bool = True
    rename: tuple[tuple[str, str], ...] = ()
    source: Source | None = None
    first_stage: FirstStage | None = None

    @property
    def files(self) -> list[str]:
        """The input files (for a first-stage run: the run, corpus and queries files)."""
        if self.first_stage is not None:
            return self.first_stage.files
        return list(self.source.files) if self.source is not None else []


def plan_inputs(cfg: RerankConfig) -> PairsPlan:
    """The driver's check of a rerank run's input, pairs or a first-stage run (see `check_pairs`)."""
    if cfg.run is None:
        return check_pairs(cfg.pairs, cfg.format, cfg.columns, cfg.keep_columns, cfg.fuse)
    first = open_first_stage(cfg)
    names = pairs_schema(first.with_instruction).names
    check_chain(names, RERANK_CHAIN, where=cfg.run)
    check_columns(names, cfg.fuse, where=cfg.run)
    keep = resolve_keep(cfg.keep_columns, {cfg.run: [n for n in names if n != c.ROW_INPUT_ERROR]})
    return PairsPlan(keep, first.media, (), None, first)


def check_pairs(
    pairs: str,
    fmt: FileFormat = "auto",
    columns: Sequence[str] | None = None,
    keep_columns: Sequence[str] = (),
    fuse: str | None = None,
) -> PairsPlan:
    """Driver-side validation before any cluster work: files exist, every file's schema (after the
    `--column` renames; for JSON Lines and CSV, its first block) fits the contract and feeds every stage of
    `RERANK_CHAIN` the columns it needs (and `--fuse` its retrieval column), the kept columns exist, the
    input has rows."""
    source = open_source(pairs, fmt, parse_columns(columns, PAIRS_SCHEMA.names), PAIRS_SCHEMA)
    schemas = source.schemas()
    for f, schema in schemas.items():
        check_pairs_schema(schema, where=f)
        check_chain(schema.names, RERANK_CHAIN, where=f)
        check_columns(schema.names, fuse, where=f)
    if source.is_empty():
        raise InputError(f"{pairs}: the input has no rows")
    keep = resolve_keep(keep_columns, {f: schema.names for f, schema in schemas.items()})
    if source.format == "parquet":
        found = media_columns_with_values(list(source.files), [source.input_name(n) for n in MEDIA_COLUMNS])
        media = bool(found)
    else:
        media = any(n in schema.names for schema in schemas.values() for n in MEDIA_COLUMNS)
    return PairsPlan(keep, media, source.rename, source)


def check_inputs(pairs: str) -> list[str]:
    """`check_pairs` for pairs under the contract's own column names: their files."""
    return check_pairs(pairs).files


def pairs_files(plan: PairsPlan, layout: OutputLayout) -> list[str]:
    """Parquet files holding the pairs, for the resumable reader (a row's key is its position in a Parquet
    file): the input files themselves, or for JSON Lines and CSV a Parquet copy under `_input/`, written
    once and reused by every attempt of the run while the input files are unchanged."""
    if plan.first_stage is not None:
        return stage_run_pairs(plan.first_stage, layout.staged_pairs)
    if plan.source is None or plan.source.format == "parquet":
        return plan.files
    return stage_copy(plan.source, layout.staged_pairs)
