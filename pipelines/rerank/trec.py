"""The ranked output as a TREC run file, `<output>/run.trec` (`--trec-run`): the form trec_eval, pytrec_eval
and every IR toolkit read.

One line per ranked row, ``qid Q0 docid rank score tag``, in the order of ``ranked/`` (query by query, each
query's candidates by rank); the tag is the run id. The score is the float32 ``score``, or ``fused_score``
when the run fused scores (``--fuse``: the score ``rank`` orders by, which trec_eval orders by too), written
as the shortest text that reads back to exactly that value (``repr`` of the float), so a reader sees the
very scores, and the very ties, the ranking had.

The file is written from ``ranked/`` after ranking and before the manifest, one ranked file and one record
batch at a time: a query's rows sit in one file ordered by rank, so nothing is collected on the driver
beyond a batch and the ids of the queries already written (to prove each query's lines are contiguous).
"""

from __future__ import annotations

import posixpath
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.storage import uris
from schemas import columns as c
from schemas.settings import SettingError
from schemas.tables import InputError

TREC_FILE = "run.trec"
BATCH_ROWS = 65_536
_WHITESPACE = re.compile(r"\s")


def check_tag(run_id: str | None, trec_run: bool) -> None:
    """With `trec_run`, the run id is the tag of every line: a whitespace in it would split the line."""
    if trec_run and run_id is not None and _WHITESPACE.search(run_id):
        raise SettingError(
            "run_id",
            f"{run_id!r} holds whitespace, which the tag column of a TREC run line (--trec-run) cannot; "
            "use e.g. " + repr(re.sub(r"\s+", "_", run_id.strip()) or "run1"),
        )


def write_run_file(trec_run: bool, root: str, run_id: str) -> str | None:
    """With `trec_run`, write `root/run.trec` from `root/ranked/` and return its URI; without it, remove a
    run.trec an earlier attempt left there (it would describe other scores) and return None."""
    target = uris.join(root, TREC_FILE)
    if not trec_run:
        uris.remove(target)
        return None
    write_trec_run(uris.join(root, "ranked"), target, run_id)
    return target


def write_trec_run(ranked: str, target: str, tag: str) -> int:
    """Write the ranked Parquet files under `ranked` (local or s3://) as the TREC run file `target`, each
    line tagged `tag`; returns the number of lines. An id holding whitespace (which would split its line)
    is an InputError naming it; no partial file is left then."""
    check_tag(tag, True)
    fs, path = uris.fresh(ranked)  # a listing to trust, also on an object store
    files = sorted(p for p in fs.find(path) if p.endswith(".parquet")) if fs.isdir(path) else []
    files = [f for f in files if not posixpath.basename(f).startswith(("_", "."))]
    out_fs, out_path = uris.filesystem(target)
    out_fs.makedirs(posixpath.dirname(out_path), exist_ok=True)
    order = _Order()
    lines = 0
    try:
        with out_fs.open(out_path, "wb") as out:
            for file in files:
                with fs.open(file, "rb") as f:
                    reader = pq.ParquetFile(f)
                    score = c.FUSED_SCORE if c.FUSED_SCORE in reader.schema_arrow.names else c.SCORE
                    columns = [c.QUERY_ID, c.CANDIDATE_ID, c.RANK, score]
                    for batch in reader.iter_batches(batch_size=BATCH_ROWS, columns=columns):
                        order.check(batch, file)
                        out.write(trec_lines(batch, tag, score).encode())
                        lines += batch.num_rows
    except BaseException:
        uris.remove(target)
        raise
    return lines


def trec_lines(rows: pa.Table | pa.RecordBatch, tag: str, score: str = c.SCORE) -> str:
    """`rows` (query_id, candidate_id, rank and the column `score`) as TREC run lines, in their order."""
    ids = {}
    for name in (c.QUERY_ID, c.CANDIDATE_ID):
        column = pc.cast(rows.column(name), pa.string())
        bad = pc.or_(pc.match_substring_regex(column, r"\s"), pc.equal(pc.utf8_length(column), 0))
        if column.null_count or pc.any(bad).as_py():
            value = column.filter(pc.fill_null(bad, True))[0].as_py() if pc.any(bad).as_py() else None
            raise InputError(
                f"{name} {value!r} is empty, null or holds whitespace, which a TREC run line cannot hold; "
                "rerun with the same --run-id without --trec-run (the scored pairs are kept)"
            )
        ids[name] = column.to_pylist()
    ranks = rows.column(c.RANK).to_pylist()
    # float32 -> float64 is exact; repr of that float is the shortest text reading back to it.
    scores = rows.column(score).to_numpy(zero_copy_only=False).astype(np.float64).tolist()
    return "".join(
        f"{q} Q0 {d} {r} {s!r} {tag}\n"
        for q, d, r, s in zip(ids[c.QUERY_ID], ids[c.CANDIDATE_ID], ranks, scores, strict=True)
    )


class _Order:
    """Proves the ranked files keep their contract as they stream by: a query's rows together (never
    resumed after another query's) and ranked 1, 2, 3, ... A breach is a bug, not a user error."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.query: str | None = None
        self.rank = 0

    def check(self, batch: pa.RecordBatch, file: str) -> None:
        if not batch.num_rows:
            return
        qids = pc.cast(batch.column(c.QUERY_ID), pa.string())
        ranks = batch.column(c.RANK).to_numpy(zero_copy_only=False).astype(np.int64)
        previous = pa.concat_arrays([pa.array([self.query], pa.string()), qids[:-1]])
        starts = pc.fill_null(pc.not_equal(qids, previous), True)
        want = np.where(starts.to_numpy(zero_copy_only=False), 1, np.append(self.rank, ranks[:-1]) + 1)
        if not np.array_equal(ranks, want):
            raise RuntimeError(
                f"{file}: ranks are not 1, 2, 3, ... within a query; the ranked output is broken"
            )
        new = qids.filter(starts).to_pylist()
        again = next((q for q in new if q in self.seen), None)
        if again is not None or len(set(new)) != len(new):
            again = again or next(q for q in new if new.count(q) > 1)
            raise RuntimeError(
                f"{file}: the rows of query {again!r} are not together; the ranked output is broken"
            )
        self.seen.update(new)
        self.query, self.rank = qids[-1].as_py(), int(ranks[-1])
