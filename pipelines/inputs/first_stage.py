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

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson
import pyarrow.parquet as pq

from pipelines.inputs.sources import file_stamp
from pipelines.refresh.join import co_partition, join_tables, partitions_for
from pipelines.storage import uris
from pipelines.storage.tables import read_files, write_file
from schemas import columns as c
from schemas.tables import CORPUS_SCHEMA, QUERIES_SCHEMA, InputError, normalize_to

RUN_SCHEMA = pa.schema(
    [
        pa.field(c.QUERY_ID, pa.string()),
        pa.field(c.DOC_ID, pa.string()),
        pa.field(c.RETRIEVAL_SCORE, pa.float64()),
        pa.field(c.RETRIEVAL_RANK, pa.int64()),
    ]
)
TREC_EXTENSIONS = (".trec", ".run", ".txt", ".tsv")
RUN_EXTENSIONS = {"trec": TREC_EXTENSIONS, "parquet": (".parquet",), "jsonl": (".jsonl", ".json")}
INSTRUCTION = "instruction"
INPUT_ERROR = "__input_error"  # why a joined row has no pair: its document or query is missing
STAGE = "join"
STAGED_RECORD = "_source.json"
ROWS_PER_PARTITION = 200_000


@dataclass(frozen=True)
class RunSource:
    """A first-stage run on the driver: its files and their format (`trec`, `parquet` or `jsonl`)."""

    uri: str
    files: tuple[str, ...]
    format: str

    def rows_estimate(self) -> int:
        """Rows, exactly for Parquet (footers), else from the bytes (a TREC line is ~40 bytes)."""
        if self.format == "parquet":
            return uris.count_rows(list(self.files))
        total = 0
        for f in self.files:
            fs, path = uris.filesystem(f)
            total += int(fs.info(path).get("size") or 0)
        return total // 40 + 1


def open_run(uri: str) -> RunSource:
    """Resolve a run file, a directory of run files or a glob; its format from the files' extension (TREC
    run text: .trec, .run, .txt, .tsv). Fails in one line naming the path."""
    known = ", ".join(e for exts in RUN_EXTENSIONS.values() for e in exts)
    everything = tuple(e for exts in RUN_EXTENSIONS.values() for e in exts)
    try:
        files = uris.list_files(uri, everything, "run")
    except InputError:
        raise InputError(
            f"--run {uri}: no run files found (TREC run text, Parquet or JSON Lines: {known})"
        ) from None
    formats = {fmt for f in files for fmt, exts in RUN_EXTENSIONS.items() if f.endswith(exts)}
    if len(formats) != 1:
        found = sorted(formats) or "none recognised"
        raise InputError(f"--run {uri}: the run's files must have one format ({known}); found {found}")
    return RunSource(uri, tuple(files), formats.pop())


def parse_trec(text: str, where: str) -> pa.Table:
    """TREC run lines `qid Q0 docid rank score tag` as RUN_SCHEMA rows; a malformed line fails naming it."""
    qids, docs, ranks, scores = [], [], [], []
    for n, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 6:
            raise InputError(
                f"{where}:{n}: a TREC run line has 6 fields (qid Q0 docid rank score tag), got {len(fields)}"
            )
        try:
            ranks.append(int(fields[3]))
            scores.append(float(fields[4]))
        except ValueError:
            raise InputError(
                f"{where}:{n}: rank and score must be numbers, got {fields[3]!r} {fields[4]!r}"
            ) from None
        qids.append(fields[0])
        docs.append(fields[2])
    return pa.table([qids, docs, scores, ranks], schema=RUN_SCHEMA)


def run_rows(table: pa.Table, where: str) -> pa.Table:
    """Parquet / JSON Lines run rows onto RUN_SCHEMA: `doc_id` or `candidate_id`; `score` and `rank` (a
    missing rank is the order by score, best first)."""
    names = table.column_names
    doc = c.DOC_ID if c.DOC_ID in names else c.CANDIDATE_ID if c.CANDIDATE_ID in names else None
    if c.QUERY_ID not in names or doc is None:
        raise InputError(f"{where}: a run needs query_id and doc_id (or candidate_id); columns: {names}")
    if "score" not in names and "rank" not in names:
        raise InputError(f"{where}: a run needs a score or a rank column; columns: {names}")
    score = (
        table.column("score").cast(pa.float64()) if "score" in names else pa.nulls(len(table), pa.float64())
    )
    if "rank" in names:
        rank = table.column("rank").cast(pa.int64())
    else:
        order = pc.sort_indices(
            pa.table({"q": table.column(c.QUERY_ID), "s": score}),
            sort_keys=[("q", "ascending"), ("s", "descending")],
        )
        rank = np.empty(len(table), dtype=np.int64)
        qids = table.column(c.QUERY_ID).take(order).to_pylist()
        k = 0
        for i, idx in enumerate(order.to_pylist()):
            k = 1 if i == 0 or qids[i] != qids[i - 1] else k + 1
            rank[idx] = k
        rank = pa.array(rank)
    return pa.table(
        [table.column(c.QUERY_ID).cast(pa.string()), table.column(doc).cast(pa.string()), score, rank],
        schema=RUN_SCHEMA,
    )


def read_run(source: RunSource) -> pa.Table:
    """The whole run on the driver (the small-input path)."""
    parts = []
    for f in source.files:
        fs, path = uris.filesystem(f)
        with fs.open(path, "rb") as handle:
            if source.format == "trec":
                parts.append(parse_trec(handle.read().decode(), f))
            elif source.format == "parquet":
                parts.append(run_rows(pq.read_table(handle), f))
            else:
                parts.append(run_rows(pajson.read_json(handle), f))
    return pa.concat_tables(parts) if parts else RUN_SCHEMA.empty_table()


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


def stage_run_pairs(
    run: RunSource,
    corpus_files: Sequence[str],
    query_files: Sequence[str],
    depth: int | None,
    output: str,
    driver_rows: int,
) -> list[str]:
    """Join the run with the corpus and queries (Parquet files under the contract's names) into pairs
    staged under `output`; reuse an earlier staging of the same files and depth. Returns the pair files."""
    record = uris.join(output, STAGED_RECORD)
    stamp = {
        "run": [file_stamp(f) for f in run.files],
        "corpus": [file_stamp(f) for f in corpus_files],
        "queries": [file_stamp(f) for f in query_files],
        "depth": depth,
    }
    if uris.exists(record) and uris.read_json(record) == stamp:
        return uris.list_parquet(output)
    uris.remove(output)
    with_instruction = INSTRUCTION in uris.read_schema(query_files[0]).names
    docs = uris.count_rows(list(corpus_files))
    if run.rows_estimate() + docs <= driver_rows:
        query_cols = queries_schema(with_instruction).names
        pairs = join_run(
            read_run(run), read_files(list(corpus_files)), read_files(list(query_files), query_cols), depth
        )
        write_file(pairs, output)
    else:
        _join_on_cluster(run, corpus_files, query_files, depth, output, with_instruction, docs)
    uris.write_json(record, stamp)
    return uris.list_parquet(output)


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
