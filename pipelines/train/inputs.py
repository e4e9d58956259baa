"""The training job's inputs: corpus, queries and judgements in the layouts `jobs.refresh` and
`jobs.evaluate` read (`--corpus/--queries/--qrels`, or `--beir DIR --split train`), plus the evaluation
queries (`--eval-queries`, `--eval-qrels`).

`check_sources` resolves every input on the driver before any cluster work (files, formats, schemas,
judgements) and fails with one line. `read_inputs` then reads the tables into the driver's memory (Ray
Data's readers, so JSON Lines and CSV ids stay strings) as plain dicts: training reads text only, and
holds the corpus on the driver; a corpus too big for one process is out of scope for this job.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pyarrow as pa

from pipelines.inputs.beir import BeirDir
from pipelines.inputs.sources import Source, file_stamp, open_source, parse_columns
from pipelines.storage import uris
from schemas import columns as c
from schemas.qrels import Qrels, read_qrels
from schemas.settings import SettingError
from schemas.tables import (
    CORPUS_SCHEMA,
    QUERIES_SCHEMA,
    InputError,
    check_corpus_schema,
    check_queries_schema,
    normalize_to,
)

INPUT_COLUMNS = (*CORPUS_SCHEMA.names, *QUERIES_SCHEMA.names)
DOC_TEXT, QUERY_TEXT = c.DOC_CONTENT[0], c.QUERY_CONTENT[0]
TABLE_EXTENSIONS = (".parquet", ".jsonl", ".json", ".csv")


@dataclass(frozen=True)
class Sources:
    """Every input, resolved on the driver. `eval_ids`: the evaluation query ids (empty: no evaluation)."""

    corpus: Source
    queries: Source
    qrels: Qrels
    qrels_path: str
    eval_ids: tuple[str, ...] = ()
    eval_source: Source | None = None
    eval_qrels: Qrels | None = None
    eval_qrels_path: str | None = None

    def stamps(self) -> dict:
        """The training data's identity: each file with its size and modification time (or ETag)."""
        files = {
            "corpus": [file_stamp(f) for f in self.corpus.files],
            "queries": [file_stamp(f) for f in self.queries.files],
            "qrels": file_stamp(self.qrels_path),
        }
        if self.eval_source is not None:
            files["eval_queries"] = [file_stamp(f) for f in self.eval_source.files]
        if self.eval_qrels_path is not None:
            files["eval_qrels"] = file_stamp(self.eval_qrels_path)
        return files


@dataclass(frozen=True)
class Inputs:
    """What training reads, in the driver's memory."""

    docs: dict[str, str]  # doc id -> text
    queries: dict[str, str]  # query id -> text (training and evaluation queries)
    qrels: Qrels
    eval_qrels: Qrels  # only the evaluation queries' judgements
    skipped_docs: int  # documents without text (training reads text only)


def check_sources(cfg) -> Sources:
    """Resolve and check the inputs of a TrainConfig; one-line errors (SettingError or InputError)."""
    if cfg.beir is not None:
        for name in ("corpus", "queries", "qrels"):
            if getattr(cfg, name) is not None:
                raise SettingError(name, "not with --beir: the BEIR directory holds it")
        beir = BeirDir(cfg.beir, cfg.split)
        problem = beir.missing_files()
        if problem:
            raise SettingError("beir", problem)
        problem = beir.missing_split()
        if problem:
            raise SettingError("split", problem)
        corpus, queries = beir.sources()
        qrels_path = beir.qrels
    else:
        for name in ("corpus", "queries", "qrels"):
            if getattr(cfg, name) is None:
                raise SettingError(name, "required: pass --corpus, --queries and --qrels, or --beir DIR")
        columns = parse_columns(cfg.columns, INPUT_COLUMNS)
        corpus = open_source(cfg.corpus, cfg.format, columns, CORPUS_SCHEMA)
        queries = open_source(cfg.queries, cfg.format, columns, QUERIES_SCHEMA)
        for f, schema in corpus.schemas().items():
            check_corpus_schema(schema, where=f)
        for f, schema in queries.schemas().items():
            check_queries_schema(schema, where=f)
        qrels_path = cfg.qrels
    for flag, source in (("--corpus", corpus), ("--queries", queries)):
        if source.is_empty():
            raise InputError(f"{flag} {source.uri}: the input has no rows")
    qrels = read_qrels(qrels_path)
    if not any(rel > 0 for docs in qrels.values() for rel in docs.values()):
        raise InputError(f"qrels {qrels_path}: no judgement with relevance > 0, so no positive to train on")
    sources = Sources(corpus, queries, qrels, qrels_path)
    if cfg.eval_queries is None:
        if cfg.eval_qrels is not None:
            raise SettingError("eval_qrels", "needs --eval-queries (the queries it judges)")
        return sources
    return _with_eval(cfg, sources)


def _with_eval(cfg, sources: Sources) -> Sources:
    """Add the evaluation queries: their ids, judgements (each needs a relevant document) and source."""
    path = cfg.eval_queries
    eval_source = None
    if path.endswith(TABLE_EXTENSIONS) or uris.filesystem(path)[0].isdir(uris.filesystem(path)[1]):
        eval_source = open_source(path, "auto", parse_columns(cfg.columns, INPUT_COLUMNS), QUERIES_SCHEMA)
        for f, schema in eval_source.schemas().items():
            if c.QUERY_ID not in schema.names:
                raise InputError(f"--eval-queries {f}: no column {c.QUERY_ID!r} (columns: {schema.names})")
        ids: list[str] = []  # read with the other tables; checked then
    else:
        if not uris.exists(path):
            raise InputError(f"--eval-queries {path}: no such file")
        fs, local = uris.filesystem(path)
        with fs.open(local, "r") as f:
            ids = [line.strip() for line in f if line.strip()]
        if not ids:
            raise InputError(f"--eval-queries {path}: no query id in the file")
    eval_qrels_path = cfg.eval_qrels or sources.qrels_path
    all_eval = read_qrels(eval_qrels_path) if cfg.eval_qrels else sources.qrels
    return replace(
        sources,
        eval_ids=tuple(dict.fromkeys(ids)),
        eval_source=eval_source,
        eval_qrels=all_eval,
        eval_qrels_path=eval_qrels_path,
    )


def check_eval(sources: Sources, eval_ids: list[str], train_ids: set[str]) -> Qrels:
    """The evaluation queries' judgements, after checking that no evaluation query is a training query
    (a query trained on says nothing about what training learnt) and each has a relevant document."""
    overlap = sorted(set(eval_ids) & train_ids)
    if overlap:
        raise InputError(
            f"{len(overlap)} evaluation queries are also training queries ({', '.join(overlap[:5])}"
            f"{', ...' if len(overlap) > 5 else ''}): remove them from the training queries or "
            "from --eval-queries"
        )
    judged = sources.eval_qrels or {}
    missing = [q for q in eval_ids if not any(rel > 0 for rel in judged.get(q, {}).values())]
    if missing:
        raise InputError(
            f"evaluation query {missing[0]!r} has no relevant document in {sources.eval_qrels_path} "
            f"({len(missing)} such); pass --eval-qrels with its judgements"
        )
    return {q: judged[q] for q in eval_ids}


def read_inputs(sources: Sources) -> Inputs:
    """Read corpus and queries (Ray Data) into the driver. Training queries: the rows of the queries
    input with a positive judgement (BEIR: the split's judged queries); the evaluation queries are
    checked against them (`check_eval`)."""
    eval_ids = list(sources.eval_ids)
    eval_table = None
    if sources.eval_source is not None:
        eval_table = _collect(sources.eval_source, QUERIES_SCHEMA)
        eval_ids = list(dict.fromkeys(eval_table.column(c.QUERY_ID).to_pylist()))
    positive = {q for q, docs in sources.qrels.items() if any(rel > 0 for rel in docs.values())}
    queries_source, beir = sources.queries, "judged" in sources.queries.transform_kwargs
    if beir:  # queries.jsonl holds every split: read the evaluation queries' texts too
        judged = sorted({*sources.queries.transform_kwargs["judged"], *eval_ids})
        queries_source = replace(sources.queries, transform_kwargs={"judged": judged})
    texts = _texts(_collect(queries_source, QUERIES_SCHEMA), c.QUERY_ID, QUERY_TEXT)
    train_ids = positive if beir else positive & set(texts)
    eval_qrels = check_eval(sources, eval_ids, train_ids) if eval_ids else {}
    if eval_table is not None:
        for q, text in _texts(eval_table, c.QUERY_ID, QUERY_TEXT).items():
            texts.setdefault(q, text)
    no_text = [q for q in eval_ids if q not in texts]
    if no_text:
        raise InputError(
            f"evaluation query {no_text[0]!r} has no query_text in --eval-queries or the queries "
            f"({len(no_text)} such)"
        )
    training = {q: sources.qrels[q] for q in sorted(train_ids) if q in texts}
    if not training:
        raise InputError(f"{sources.queries.uri}: no query with a positive judgement in {sources.qrels_path}")
    corpus = _collect(sources.corpus, CORPUS_SCHEMA)
    docs = _texts(corpus, c.DOC_ID, DOC_TEXT)
    return Inputs(docs, texts, training, eval_qrels, corpus.num_rows - len(docs))


def _collect(source: Source, schema: pa.Schema) -> pa.Table:
    import ray

    nullable = pa.schema([f.with_nullable(True) for f in schema])
    ds = source.read().map_batches(normalize_to, fn_kwargs={"schema": nullable}, batch_format="pyarrow")
    tables = ray.get(ds.to_arrow_refs())
    return pa.concat_tables(tables) if tables else nullable.empty_table()


def _texts(table: pa.Table, id_column: str, text_column: str) -> dict[str, str]:
    """id -> text of the rows with both (a row without text has nothing training could read)."""
    ids, texts = table.column(id_column).to_pylist(), table.column(text_column).to_pylist()
    return {i: t for i, t in zip(ids, texts, strict=True) if i is not None and t}
