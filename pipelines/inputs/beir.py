"""The BEIR layout, as published for held-out IR evaluation sets:

    DIR/corpus.jsonl      {"_id": ..., "title": ..., "text": ...} per line
    DIR/queries.jsonl     {"_id": ..., "text": ...} per line (the queries of every split)
    DIR/qrels/<split>.tsv  a header line `query-id corpus-id score`, then one judgement per line

Documents are read as `doc_id` = `_id` and `doc_text` = title and text joined as BEIR's own evaluation
joins them (`(title + " " + text).strip()`, beir.reranking.Rerank and beir's SentenceBERT), so scores and
metrics compare with published BEIR numbers. As BEIR's `GenericDataLoader.load(split)` does, only the
queries judged in the split's qrels are kept.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.inputs.sources import Source, open_source
from pipelines.storage import uris
from schemas import columns as c
from schemas.qrels import read_qrels
from schemas.tables import InputError

CORPUS_FILE = "corpus.jsonl"
QUERIES_FILE = "queries.jsonl"
BEIR_STRINGS = (c.BEIR_ID, c.BEIR_TITLE, c.BEIR_TEXT)
DOC_TEXT, QUERY_TEXT = c.DOC_CONTENT[0], c.QUERY_CONTENT[0]  # doc_text, query_text


def document_text(title: str | None, text: str | None) -> str:
    """BEIR's document text: the title and the text joined by a space, stripped."""
    return ((title or "") + " " + (text or "")).strip()


def corpus_rows(table: pa.Table) -> pa.Table:
    """corpus.jsonl rows as corpus rows: `doc_id`, `doc_text`."""
    n = table.num_rows
    titles = _column(table, c.BEIR_TITLE, n)
    texts = _column(table, c.BEIR_TEXT, n)
    docs = [document_text(t, x) for t, x in zip(titles, texts, strict=True)]
    return pa.table(
        {c.DOC_ID: table.column(c.BEIR_ID).cast(pa.string()), DOC_TEXT: pa.array(docs, pa.string())}
    )


def query_rows(table: pa.Table, judged: list[str]) -> pa.Table:
    """queries.jsonl rows as query rows (`query_id`, `query_text`), only the queries in `judged`."""
    ids = table.column(c.BEIR_ID).cast(pa.string())
    out = pa.table({c.QUERY_ID: ids, QUERY_TEXT: table.column(c.BEIR_TEXT).cast(pa.string())})
    return out.filter(pc.is_in(ids, value_set=pa.array(judged, pa.string())))


def _column(table: pa.Table, name: str, n: int) -> list:
    return table.column(name).to_pylist() if name in table.column_names else [None] * n


@dataclass(frozen=True)
class BeirDir:
    root: str
    split: str = "test"

    @property
    def corpus(self) -> str:
        return uris.join(self.root, CORPUS_FILE)

    @property
    def queries(self) -> str:
        return uris.join(self.root, QUERIES_FILE)

    @property
    def qrels(self) -> str:
        return uris.join(self.root, "qrels", f"{self.split}.tsv")

    def splits(self) -> list[str]:
        fs, path = uris.filesystem(uris.join(self.root, "qrels"))
        if not fs.isdir(path):
            return []
        return sorted(
            p.rsplit("/", 1)[-1][: -len(".tsv")] for p in fs.ls(path, detail=False) if p.endswith(".tsv")
        )

    def missing_files(self) -> str | None:
        """What the directory lacks of corpus.jsonl and queries.jsonl, as one line, or None."""
        for path in (self.corpus, self.queries):
            if not uris.exists(path):
                return f"{self.root}: no {path.rsplit('/', 1)[-1]} (expected a BEIR directory)"
        return None

    def missing_split(self) -> str | None:
        if uris.exists(self.qrels):
            return None
        return f"{self.qrels}: no such file (splits present: {', '.join(self.splits()) or 'none'})"

    def sources(self) -> tuple[Source, Source]:
        """(corpus, queries) as sources of corpus and query rows, checked on the driver: both files have
        `_id` and `text` (the first block), and the split's qrels read."""
        judged = sorted(read_qrels(self.qrels))
        corpus = open_source(self.corpus, "jsonl", {}, pa.schema([]), strings=BEIR_STRINGS)
        queries = open_source(self.queries, "jsonl", {}, pa.schema([]), strings=BEIR_STRINGS)
        for source, needs in ((corpus, (c.BEIR_ID,)), (queries, (c.BEIR_ID, c.BEIR_TEXT))):
            for f, schema in source.schemas().items():
                for name in needs:
                    if name not in schema.names:
                        raise InputError(
                            f"{f}: missing the BEIR field {name!r} (fields present: {schema.names})"
                        )
        if not any(n in s.names for s in corpus.schemas().values() for n in (c.BEIR_TITLE, c.BEIR_TEXT)):
            raise InputError(f"{self.corpus}: documents have neither 'title' nor 'text'")
        return (
            replace(corpus, transform=corpus_rows),
            replace(queries, transform=query_rows, transform_kwargs={"judged": judged}),
        )
