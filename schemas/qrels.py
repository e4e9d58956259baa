"""Relevance judgements (qrels): reading Parquet, TREC text or BEIR TSV, validated with one-line errors.

Parquet qrels have the columns `query_id`, `doc_id` (string or integer; integers are read as their
decimal string) and `relevance` (integer). TREC qrels text has one judgement per line,
``query_id iteration doc_id relevance`` separated by whitespace (the iteration field is ignored, as in
trec_eval). BEIR qrels (``qrels/<split>.tsv``) start with the header line ``query-id corpus-id score``
and hold ``query_id<TAB>doc_id<TAB>relevance`` per line; the header tells them apart from TREC text.
A path ending in ``.parquet`` or naming a directory is read as Parquet; anything else as text.
Local paths and ``s3://`` URIs are accepted.

Qrels are small (one row per judged document), so they are read on the driver and shipped to workers.
"""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from schemas.columns import BEIR_QRELS_HEADER, DOC_ID, QUERY_ID, RELEVANCE

QRELS_COLUMNS = (QUERY_ID, DOC_ID, RELEVANCE)

# query_id -> doc_id -> relevance
Qrels = dict[str, dict[str, int]]


class QrelsError(ValueError):
    """Unusable qrels; the message is one line naming the path, the column or line, and the fix."""


def read_qrels(path: str) -> Qrels:
    """Read and validate qrels from `path` (Parquet file or directory, TREC qrels text or BEIR TSV)."""
    fs, fs_path = resolve_filesystem(path, "qrels")
    info = fs.get_file_info(fs_path)
    if info.type == pafs.FileType.NotFound:
        raise QrelsError(f"qrels {path}: no such file or directory; pass a Parquet file/dir or TREC qrels")
    if info.type == pafs.FileType.Directory or fs_path.endswith(".parquet"):
        table = _read_parquet(fs, fs_path, path, is_dir=info.type == pafs.FileType.Directory)
    else:
        table = _read_text(fs, fs_path, path)
    return _to_qrels(table, path)


def qrels_stats(qrels: Qrels) -> dict[str, int]:
    """Counts a report needs: judged queries, judgements, and judgements with relevance >= 1."""
    return {
        "queries": len(qrels),
        "judgements": sum(len(docs) for docs in qrels.values()),
        "relevant": sum(1 for docs in qrels.values() for rel in docs.values() if rel >= 1),
    }


def resolve_filesystem(path: str, what: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and in-filesystem path of a local path or URI (``s3://``, ``file://``).

    `what` names the input in the error (e.g. "qrels") when the URI cannot be opened.
    """
    if "://" not in path:
        return pafs.LocalFileSystem(), os.path.abspath(path)
    try:
        return pafs.FileSystem.from_uri(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValueError(f"{what} {path}: cannot open this URI ({exc})") from None


def _read_parquet(fs: pafs.FileSystem, fs_path: str, path: str, *, is_dir: bool) -> pa.Table:
    if is_dir:
        selector = pafs.FileSelector(fs_path, recursive=True)
        files = sorted(
            f.path
            for f in fs.get_file_info(selector)
            if f.type == pafs.FileType.File and f.path.endswith(".parquet")
        )
        if not files:
            raise QrelsError(f"qrels {path}: directory holds no *.parquet file")
    else:
        files = [fs_path]
    tables = []
    for file in files:
        try:
            schema = pq.read_schema(file, filesystem=fs)
        except pa.ArrowInvalid as exc:
            raise QrelsError(f"qrels {file}: not a readable Parquet file ({exc})") from exc
        missing = [c for c in QRELS_COLUMNS if c not in schema.names]
        if missing:
            raise QrelsError(
                f"qrels {file}: missing column {missing[0]!r} (columns present: {schema.names}); "
                f"expected {list(QRELS_COLUMNS)}"
            )
        tables.append(pq.read_table(file, filesystem=fs, columns=list(QRELS_COLUMNS)))
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except pa.ArrowInvalid as exc:
        raise QrelsError(f"qrels {path}: files disagree on column types ({exc})") from exc


def _read_text(fs: pafs.FileSystem, fs_path: str, path: str) -> pa.Table:
    """TREC qrels text, or BEIR TSV when the first non-empty line is BEIR's header."""
    with fs.open_input_stream(fs_path) as stream:
        raw = stream.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise QrelsError(
            f"qrels {path}: not UTF-8 text; pass TREC qrels text, BEIR TSV or a .parquet file ({exc})"
        ) from exc
    lines = [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if lines and tuple(lines[0][1].split()) == BEIR_QRELS_HEADER:
        return _parse_lines(lines[1:], path, _beir_fields)
    return _parse_lines(lines, path, _trec_fields)


def _trec_fields(line: str) -> tuple[str, str, str] | str:
    fields = line.split()
    if len(fields) != 4:
        return f"expected 4 fields 'query_id iteration doc_id relevance', got {len(fields)}"
    return fields[0], fields[2], fields[3]


def _beir_fields(line: str) -> tuple[str, str, str] | str:
    fields = [f.strip() for f in line.split("\t")]
    if len(fields) != 3:
        return f"expected 3 tab-separated fields 'query-id corpus-id score' (BEIR), got {len(fields)}"
    return fields[0], fields[1], fields[2]


def _parse_lines(lines: list[tuple[int, str]], path: str, split) -> pa.Table:
    qids, docs, rels = [], [], []
    for lineno, line in lines:
        fields = split(line)
        if isinstance(fields, str):
            raise QrelsError(f"qrels {path}:{lineno}: {fields}: {line.strip()[:80]!r}")
        try:
            rel = int(fields[2])
        except ValueError:
            raise QrelsError(f"qrels {path}:{lineno}: relevance {fields[2]!r} is not an integer") from None
        qids.append(fields[0])
        docs.append(fields[1])
        rels.append(rel)
    if not qids:
        raise QrelsError(f"qrels {path}: no judgements found")
    return pa.table({QUERY_ID: qids, DOC_ID: docs, RELEVANCE: pa.array(rels, pa.int64())})


def _to_qrels(table: pa.Table, path: str) -> Qrels:
    if table.num_rows == 0:
        raise QrelsError(f"qrels {path}: no judgements found")
    for col in (QUERY_ID, DOC_ID):
        t = table.schema.field(col).type
        if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t)):
            raise QrelsError(f"qrels {path}: column {col!r} has type {t}, expected string")
    rel_type = table.schema.field(RELEVANCE).type
    if not pa.types.is_integer(rel_type):
        raise QrelsError(f"qrels {path}: column {RELEVANCE!r} has type {rel_type}, expected integer")
    for col in QRELS_COLUMNS:
        nulls = table[col].null_count
        if nulls:
            raise QrelsError(f"qrels {path}: column {col!r} has {nulls} null value(s); drop or fill them")
    qids = pc.cast(table[QUERY_ID], pa.string()).to_pylist()
    docs = pc.cast(table[DOC_ID], pa.string()).to_pylist()
    rels = table[RELEVANCE].to_pylist()
    qrels: Qrels = {}
    for qid, doc, rel in zip(qids, docs, rels, strict=True):
        judged = qrels.setdefault(qid, {})
        if doc in judged:
            # trec_eval refuses duplicate judgements too; silently keeping one would change the metrics.
            raise QrelsError(
                f"qrels {path}: duplicate judgement for query {qid!r} doc {doc!r}; keep one row per pair"
            )
        judged[doc] = rel
    return qrels
