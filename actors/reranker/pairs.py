"""Turn a block of pair rows into the inputs `CrossEncoder.preprocess` takes.

Each side (`query_*`, `candidate_*`) is built by `actors.elements.build_elements`, the builder the
embedder uses, so a pair fails with the same reasons an embedding does. A side with one modality is that
value (a string, a PIL image, an audio or video array); a side with several is a dict
`{"text": ..., "image": ...}`, exactly as sentence-transformers takes them. A pair's `instruction` (when the
column is there and the value is not null) is its prompt: `instructions` reads them.
"""

from __future__ import annotations

import pyarrow as pa

from actors.elements import build_elements
from schemas import columns as c

SIDES = ("query", "candidate")


def build_pairs(table: pa.Table, rows: list[int], model=None) -> tuple[list, dict[int, str]]:
    """Return ([query, candidate] pairs for `rows` that can be built, {row: reason} for the others), in
    `rows` order. A row whose query side fails reports the query's reason; its candidate is not built."""
    built: dict[str, dict[int, object]] = {}
    errors: dict[int, str] = {}
    for side in SIDES:
        todo = [i for i in rows if i not in errors]
        inputs, side_errors = build_elements(table, side, todo, model)
        errors.update(side_errors)
        ok = [i for i in todo if i not in side_errors]
        built[side] = {i: _bare(x) for i, x in zip(ok, inputs, strict=True)}
    pairs = [[built[side][i] for side in SIDES] for i in rows if i not in errors]
    return pairs, errors


def _bare(element):
    """One modality is the bare object (a string, PIL image, array), as CrossEncoder pairs take it; several
    stay a dict."""
    if isinstance(element, dict) and len(element) == 1:
        return next(iter(element.values()))
    return element


def instructions(table: pa.Table, rows: list[int]) -> list[str | None]:
    """Each row's own instruction (None: the run's prompt applies), in `rows` order."""
    if c.INSTRUCTION not in table.column_names:
        return [None] * len(rows)
    values = table.column(c.INSTRUCTION).to_pylist()
    return [values[i] for i in rows]
