"""First-stage runs as input: a retriever's run (TREC run text, or Parquet / JSON Lines rows) joined with a
corpus and queries into pairs, before any scoring.

    run rows ─► the K best per query by rank (a pair listed twice: its best-ranked row kept)
             ─► join documents on doc_id ─► join queries on query_id ─► pairs, query-clustered

The depth is applied before the join, so a document missing from the corpus among a query's K best is one
error row and K−1 pairs. A row whose document or query is missing keeps its ids and gets `__input_error`
naming what is missing; the validate stage turns it into an error row (stage `join`). The run's score and
rank are carried as `retrieval_score` / `retrieval_rank`; a query's `instruction` comes along when the
queries have one.

The join runs on Ray Data as two co-partitioned hash joins (`pipelines.refresh.join`); inputs of at most
`driver_rows` rows are joined in the driver process instead (the same functions, without a cluster round
trip). The pairs are staged as Parquet under the run's output and reused by every attempt of the run while
the run, corpus and queries files are unchanged, so resume and run identity work as for pairs input.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.inputs.beir import BeirDir
from pipelines.inputs.runs import RUN_SCHEMA, RunSource, open_run, parse_trec, read_run, run_rows
from pipelines.inputs.sources import Source, file_stamp, open_source, parse_columns, stage_source
from pipelines.refresh.join import co_partition, join_tables, partitions_for
from pipelines.storage import uris
from pipelines.storage.tables import write_file
from schemas import columns as c
from schemas.tables import (
    CORPUS_SCHEMA,
    QUERIES_SCHEMA,
    InputError,
    check_corpus_schema,
    check_queries_schema,
    normalize_to,
)

INSTRUCTION = c.INSTRUCTION
INPUT_ERROR = c.ROW_INPUT_ERROR  # why a joined row has no pair: its document or query is missing
STAGED_RECORD = "_source.json"
ROWS_PER_PARTITION = 200_000
DRIVER_BYTES = 64 << 20  # inputs (run, corpus, queries) up to this size are joined in the driver process


def best_per_query(rows: pa.Table, _right=None, depth: int | None = None) -> pa.Table:
    """Each query's `depth` best rows by rank (ties: higher score, then doc_id); a pair listed more than
    once keeps its best-ranked row. Rows come out by query, then rank."""
    if not rows.num_rows:
        return rows
    order = rows.sort_by(
        [
            (c.QUERY_ID, "ascending"),
            (c.RETRIEVAL_RANK, "ascending"),
            (c.RETRIEVAL_SCORE, "descending"),
            (c.DOC_ID, "ascending"),
        ]
    )
    qids = order.column(c.QUERY_ID).to_pylist()
    docs = order.column(c.DOC_ID).to_pylist()
    keep, seen, taken = [], set(), {}
    for i, (q, d) in enumerate(zip(qids, docs, strict=True)):
        if (q, d) in seen:
            continue
        seen.add((q, d))
        if depth is not None and taken.get(q, 0) >= depth:
            continue
        taken[q] = taken.get(q, 0) + 1
        keep.append(i)
    return order.take(pa.array(keep, pa.int64()))


def attach_documents(rows: pa.Table, corpus: pa.Table | None) -> pa.Table:
    """Run rows with their document's content as `candidate_*`; a missing document named in INPUT_ERROR."""
    corpus = normalize_to(corpus, CORPUS_SCHEMA) if corpus is not None else CORPUS_SCHEMA.empty_table()
    found = pc.is_in(rows.column(c.DOC_ID), value_set=corpus.column(c.DOC_ID))
    joined = join_tables(rows, corpus, [c.DOC_ID])
    errors = [
        None if ok else f"document {d!r} is not in the corpus"
        for ok, d in zip(found.to_pylist(), rows.column(c.DOC_ID).to_pylist(), strict=True)
    ]
    out = joined.append_column(INPUT_ERROR, pa.array(errors, pa.string()))
    for doc_col, cand_col in zip(c.DOC_CONTENT, c.CANDIDATE_CONTENT, strict=True):
        out = out.rename_columns([cand_col if n == doc_col else n for n in out.column_names])
    return out.rename_columns([c.CANDIDATE_ID if n == c.DOC_ID else n for n in out.column_names])


def queries_schema(with_instruction: bool) -> pa.Schema:
    extra = [pa.field(INSTRUCTION, pa.string())] if with_instruction else []
    return pa.schema([*QUERIES_SCHEMA, *extra])


def attach_queries(rows: pa.Table, queries: pa.Table | None, with_instruction: bool = False) -> pa.Table:
    """Rows with their query's content (and instruction); a missing query named in INPUT_ERROR (a missing
    document's reason, found first, is kept). Rows come out by query, then rank: query-clustered."""
    schema = queries_schema(with_instruction)
    queries = normalize_to(queries, schema) if queries is not None else schema.empty_table()
    found = pc.is_in(rows.column(c.QUERY_ID), value_set=queries.column(c.QUERY_ID)).to_pylist()
    joined = join_tables(rows, queries, [c.QUERY_ID])
    reasons = [
        r if r is not None or ok else f"query {q!r} is not in the queries"
        for r, ok, q in zip(
            rows.column(INPUT_ERROR).to_pylist(), found, rows.column(c.QUERY_ID).to_pylist(), strict=True
        )
    ]
    joined = joined.set_column(
        joined.schema.get_field_index(INPUT_ERROR), INPUT_ERROR, pa.array(reasons, pa.string())
    )
    ordered = joined.sort_by([(c.QUERY_ID, "ascending"), (c.RETRIEVAL_RANK, "ascending")])
    return ordered.select(pairs_columns(with_instruction)).cast(pairs_schema(with_instruction))


def pairs_columns(with_instruction: bool) -> list[str]:
    return pairs_schema(with_instruction).names


def pairs_schema(with_instruction: bool) -> pa.Schema:
    fields = [
        pa.field(c.QUERY_ID, pa.string()),
        pa.field(c.CANDIDATE_ID, pa.string()),
        *[pa.field(n, pa.string()) for n in (*c.QUERY_CONTENT, *c.CANDIDATE_CONTENT)],
        pa.field(c.RETRIEVAL_SCORE, pa.float32()),
        pa.field(c.RETRIEVAL_RANK, pa.int32()),
    ]
    if with_instruction:
        fields.append(pa.field(INSTRUCTION, pa.string()))
    return pa.schema([*fields, pa.field(INPUT_ERROR, pa.string())])


def join_run(run: pa.Table, corpus: pa.Table, queries: pa.Table, depth: int | None) -> pa.Table:
    """The driver path: the whole join over in-memory tables."""
    with_instruction = INSTRUCTION in queries.column_names
    rows = best_per_query(run, depth=depth)
    return attach_queries(attach_documents(rows, corpus), queries, with_instruction)


@dataclass(frozen=True)
class FirstStage:
    """A run joined with its corpus and queries, resolved on the driver (files exist, schemas fit)."""

    run: RunSource
    corpus: Source
    queries: Source
    depth: int | None

    @property
    def files(self) -> list[str]:
        """Every input file: what the run's identity records (sizes and modification times)."""
        return [*self.run.files, *self.corpus.files, *self.queries.files]

    def bytes(self) -> int:
        return sum(source.size_bytes() for source in (self.run, self.corpus, self.queries))

    @property
    def with_instruction(self) -> bool:
        return any(INSTRUCTION in schema.names for schema in self.queries.schemas().values())

    @property
    def media(self) -> bool:
        return any(
            name in schema.names for schema in self.corpus.schemas().values() for name in c.DOC_CONTENT[1:]
        )


def open_first_stage(cfg) -> FirstStage:
    """`cfg` (a RerankConfig) with `--run`: the run, and the corpus and queries from `--corpus`/`--queries`
    (`--format`, `--column` apply to them) or `--beir DIR --split S`, each checked on the driver."""
    run = open_run(cfg.run)
    if cfg.beir is not None:
        beir = BeirDir(cfg.beir, cfg.split)
        problem = beir.missing_files() or beir.missing_split()
        if problem:
            raise InputError(f"--beir: {problem}")
        corpus, queries = beir.sources()
    else:
        columns = parse_columns(cfg.columns, (*CORPUS_SCHEMA.names, *queries_schema(True).names))
        corpus = open_source(cfg.corpus, cfg.format, columns, CORPUS_SCHEMA)
        queries = open_source(cfg.queries, cfg.format, columns, queries_schema(True))
        for f, schema in corpus.schemas().items():
            check_corpus_schema(schema, where=f)
        for f, schema in queries.schemas().items():
            check_queries_schema(schema, where=f)
    for flag, source in (("--corpus", corpus), ("--queries", queries)):
        if source.is_empty():
            raise InputError(f"{flag} {source.uri}: the input has no rows")
    return FirstStage(run, corpus, queries, cfg.depth)


def stage_run_pairs(first: FirstStage, output: str, driver_bytes: int | None = None) -> list[str]:
    """Join the run with the corpus and queries into pairs staged under `output/pairs/` (the corpus and
    queries copied to Parquet under `output/sources/` first when they are not Parquet under the contract's
    names); an earlier staging of the same files and depth is reused. Returns the pair files."""
    record = uris.join(output, STAGED_RECORD)
    stamp = {"files": [file_stamp(f) for f in first.files], "depth": first.depth}
    pairs_dir = uris.join(output, "pairs")
    if uris.exists(record) and uris.read_json(record) == stamp:
        return uris.list_parquet(pairs_dir)
    uris.remove(output)
    with_instruction = first.with_instruction
    query_schema = queries_schema(with_instruction)
    if first.bytes() <= (
        DRIVER_BYTES if driver_bytes is None else driver_bytes
    ):  # small: read and joined here, no Ray Data execution
        corpus = normalize_to(first.corpus.read_table(), CORPUS_SCHEMA)
        queries = normalize_to(first.queries.read_table(), query_schema)
        write_file(join_run(read_run(first.run), corpus, queries, first.depth), pairs_dir)
    else:
        corpus_files = _parquet(first.corpus, CORPUS_SCHEMA, uris.join(output, "sources", "corpus"))
        query_files = _parquet(first.queries, query_schema, uris.join(output, "sources", "queries"))
        docs = uris.count_rows(corpus_files)
        _join_on_cluster(first.run, corpus_files, query_files, first.depth, pairs_dir, with_instruction, docs)
    uris.write_json(record, stamp)
    return uris.list_parquet(pairs_dir)


def _parquet(source: Source, schema: pa.Schema, staged: str) -> list[str]:
    if source.format == "parquet" and not source.rename and source.transform is None:
        return list(source.files)
    return stage_source(source, schema, staged)["files"]


def _read_run_dataset(run: RunSource):
    import ray

    if run.format == "trec":
        lines = ray.data.read_text(list(run.files), filesystem=uris.pyarrow_filesystem(run.files[0]))
        return lines.map_batches(
            lambda t: parse_trec("\n".join(t.column("text").to_pylist()), run.uri), batch_format="pyarrow"
        )
    if run.format == "parquet":
        ds = ray.data.read_parquet(list(run.files), filesystem=uris.pyarrow_filesystem(run.files[0]))
    else:
        ds = ray.data.read_json(list(run.files), filesystem=uris.pyarrow_filesystem(run.files[0]))
    return ds.map_batches(lambda t: run_rows(t, run.uri), batch_format="pyarrow")


def _join_on_cluster(run, corpus_files, query_files, depth, output, with_instruction, docs) -> None:
    """Three co-partitioned steps: the K best per query, documents by doc_id, queries by query_id (each
    output block holds whole queries, ordered by rank), written as Parquet."""
    import ray

    partitions = partitions_for(run.rows_estimate() + docs, ROWS_PER_PARTITION)
    fs = uris.pyarrow_filesystem(output)
    best = co_partition(
        _read_run_dataset(run),
        None,
        key=[c.QUERY_ID],
        num_partitions=partitions,
        fn=best_per_query,
        fn_kwargs={"depth": depth},
    )
    corpus = ray.data.read_parquet(list(corpus_files), filesystem=uris.pyarrow_filesystem(corpus_files[0]))
    with_docs = co_partition(
        best,
        corpus.map_batches(normalize_to, fn_kwargs={"schema": CORPUS_SCHEMA}, batch_format="pyarrow"),
        key=[c.DOC_ID],
        num_partitions=partitions,
        fn=lambda left, right: attach_documents(left, right),
        left_schema=RUN_SCHEMA,
        right_schema=CORPUS_SCHEMA,
    )
    schema = queries_schema(with_instruction)
    queries = ray.data.read_parquet(list(query_files), filesystem=uris.pyarrow_filesystem(query_files[0]))
    joined = co_partition(
        with_docs,
        queries.map_batches(normalize_to, fn_kwargs={"schema": schema}, batch_format="pyarrow"),
        key=[c.QUERY_ID],
        num_partitions=partitions,
        fn=lambda left, right: attach_queries(left, right, with_instruction),
        left_schema=_with_docs_schema(),
        right_schema=schema,
    )
    joined.write_parquet(output, filesystem=fs)


def _with_docs_schema() -> pa.Schema:
    """The rows after `attach_documents`: run columns with the document's content as candidate_*."""
    return pa.schema(
        [
            pa.field(c.QUERY_ID, pa.string()),
            pa.field(c.CANDIDATE_ID, pa.string()),
            pa.field(c.RETRIEVAL_SCORE, pa.float64()),
            pa.field(c.RETRIEVAL_RANK, pa.int64()),
            *[pa.field(n, pa.string()) for n in c.CANDIDATE_CONTENT],
            pa.field(INPUT_ERROR, pa.string()),
        ]
    )
