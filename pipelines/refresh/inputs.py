"""The refresh's inputs: corpus and queries from Parquet, JSON Lines or CSV (`--format`, `--column`), or
a BEIR directory (`--beir DIR --split test`), checked on the driver before any cluster work.

Embedding and retrieval read Parquet files. Inputs that are Parquet under the contract's own column names
are used as they are; any other input is first copied, renamed and projected onto the contract, to
`runs/<run_id>/inputs/{corpus,queries}/` (one stage of the night, skipped when the night resumes).

Queries may carry an `instruction` column, read exactly as `jobs.rerank --run` reads it
(`pipelines.inputs.first_stage.queries_schema`): each query's instruction becomes its candidate pairs'
prompt. Its digest (`pipelines.rerank.validate.instruction_digest`) is part of the night's identity.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.inputs.beir import BeirDir
from pipelines.inputs.first_stage import queries_schema
from pipelines.inputs.sources import FORMATS, Source, open_source, parse_columns, stage_source
from pipelines.rerank.validate import ALL_COLUMNS, check_keep_columns, instruction_digest
from pipelines.storage import uris
from schemas.settings import SettingError, one_of
from schemas.tables import (
    CORPUS_SCHEMA,
    PAIRS_SCHEMA,
    InputError,
    check_corpus_schema,
    check_queries_schema,
)

QUERIES_INPUT_SCHEMA = queries_schema(with_instruction=True)  # the contract's queries, with `instruction`
INPUT_COLUMNS = (*CORPUS_SCHEMA.names, *QUERIES_INPUT_SCHEMA.names)
NOT_WITH_BEIR = {
    "corpus": "the corpus is DIR/corpus.jsonl",
    "queries": "the queries are DIR/queries.jsonl",
    "qrels": "the judgements are DIR/qrels/<split>.tsv",
}


def check_settings(cfg) -> None:
    """The input settings of a RefreshConfig: exactly one of --beir DIR or --corpus with --queries; the
    BEIR directory holds its files and the split; `--column` and `--keep-columns` name known columns."""
    one_of(cfg, "format", FORMATS)
    if cfg.beir is not None:
        for name, why in NOT_WITH_BEIR.items():
            if getattr(cfg, name) is not None:
                raise SettingError(name, f"not with --beir: {why}")
        if cfg.columns:
            raise SettingError(
                "columns", "not with --beir: the BEIR layout names its fields (_id, title, text)"
            )
        if cfg.format not in ("auto", "jsonl"):
            raise SettingError("format", f"{cfg.format!r}: a BEIR directory holds JSON Lines")
        if not cfg.split or "/" in cfg.split:
            raise SettingError("split", f"{cfg.split!r}: a split is a plain name, such as test or dev")
        beir = BeirDir(cfg.beir, cfg.split)
        problem = beir.missing_files()
        if problem:
            raise SettingError("beir", problem)
        problem = beir.missing_split()
        if problem:
            raise SettingError("split", problem)
    else:
        for name in ("corpus", "queries"):
            if getattr(cfg, name) is None:
                raise SettingError(name, "required: pass --corpus and --queries, or --beir DIR")
    parse_columns(cfg.columns, INPUT_COLUMNS)
    check_keep_columns(cfg.keep_columns)
    for name in cfg.keep_columns:
        if name != ALL_COLUMNS and name not in PAIRS_SCHEMA.names:
            raise SettingError(
                "keep_columns",
                f"{name!r}: the night's candidates hold only {', '.join(PAIRS_SCHEMA.names)}",
            )


def qrels_path(cfg) -> str | None:
    """The judgements the night evaluates against: --qrels, or the BEIR split's qrels."""
    return BeirDir(cfg.beir, cfg.split).qrels if cfg.beir is not None else cfg.qrels


@dataclass(frozen=True)
class Inputs:
    """The corpus and query files the night reads (Parquet) and their rows; `pending`: (corpus, queries)
    sources still to be copied to Parquet by `stage_inputs` (the files and counts are known after);
    `instructions`: the digest of the queries' `instruction` column as read (None: no such column), part
    of the night's identity."""

    corpus_files: list[str]
    query_files: list[str]
    docs: int
    queries: int
    pending: tuple[Source, Source] | None = None
    instructions: str | None = None


def check_inputs(cfg) -> Inputs:
    """Driver-side validation before any cluster work: files exist and every schema (after renames; for
    JSON Lines and CSV, its first block) fits the contract, and neither input is empty. The queries'
    `instruction` column, when there is one, is read for its digest (only that column, for Parquet)."""
    if cfg.beir is not None:
        corpus, queries = BeirDir(cfg.beir, cfg.split).sources()
    else:
        columns = parse_columns(cfg.columns, INPUT_COLUMNS)
        corpus = open_source(cfg.corpus, cfg.format, columns, CORPUS_SCHEMA)
        queries = open_source(cfg.queries, cfg.format, columns, QUERIES_INPUT_SCHEMA)
        for f, schema in corpus.schemas().items():
            check_corpus_schema(schema, where=f)
        for f, schema in queries.schemas().items():
            check_queries_schema(schema, where=f)
    for flag, source in (("--corpus", corpus), ("--queries", queries)):
        if source.is_empty():
            raise InputError(f"{flag} {source.uri}: the input has no rows")
    # A BEIR directory's queries are built from `_id` and `text` alone: they have no instruction.
    instructions = instruction_digest(queries) if cfg.beir is None else None
    direct = all(s.format == "parquet" and not s.rename and s.transform is None for s in (corpus, queries))
    if direct:
        rows = corpus.row_count(), queries.row_count()
        return Inputs(list(corpus.files), list(queries.files), *rows, instructions=instructions)
    return Inputs(
        list(corpus.files), list(queries.files), 0, 0, pending=(corpus, queries), instructions=instructions
    )


def stage_inputs(inputs: Inputs, run_dir: str) -> dict:
    """Copy pending inputs to Parquet under `run_dir/inputs/`; the fields of the Inputs to use instead."""
    corpus, queries = inputs.pending
    with_instruction = inputs.instructions is not None
    docs = stage_source(corpus, CORPUS_SCHEMA, uris.join(run_dir, "inputs", "corpus"))
    judged = stage_source(queries, queries_schema(with_instruction), uris.join(run_dir, "inputs", "queries"))
    for source, staged in ((corpus, docs), (queries, judged)):
        if not staged["rows"]:  # a BEIR split whose judged queries are not in queries.jsonl
            raise InputError(f"{source.uri}: no rows to read (for BEIR: no query of the split's qrels)")
    return {
        "corpus_files": docs["files"],
        "query_files": judged["files"],
        "docs": docs["rows"],
        "queries": judged["rows"],
        "instructions": inputs.instructions,
    }
