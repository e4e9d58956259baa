"""First-stage runs as the retriever wrote them: TREC run text (`qid Q0 docid rank score tag`), or Parquet /
JSON Lines rows with `query_id`, `doc_id` (or `candidate_id`), `score` and `rank`, read onto one schema."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson
import pyarrow.parquet as pq

from pipelines.storage import uris
from schemas import columns as c
from schemas.tables import InputError

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


@dataclass(frozen=True)
class RunSource:
    """A first-stage run on the driver: its files and their format (`trec`, `parquet` or `jsonl`)."""

    uri: str
    files: tuple[str, ...]
    format: str

    def size_bytes(self) -> int:
        return sum(
            int(uris.filesystem(f)[0].info(uris.filesystem(f)[1]).get("size") or 0) for f in self.files
        )

    def rows_estimate(self) -> int:
        """Rows, exactly for Parquet (footers), else from the bytes (a TREC line is ~40 bytes)."""
        if self.format == "parquet":
            return uris.count_rows(list(self.files))
        return self.size_bytes() // 40 + 1


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
