"""Content hashes: what decides that a document, a query or a scored pair is unchanged from an earlier night.

A row's content is the modalities it has (`{"text": ..., "image": ...}`, nulls left out), whatever side it
is on: `doc_text` in the corpus and `candidate_text` in a pair hash alike, so a pair's hashes can be
computed from the pairs table alone. The hash covers media *references*, not the bytes behind them: a
document whose image is replaced at the same URI is not detected as changed (give changed media a new URI).

A pair's own `instruction` (its prompt) is part of its score-cache key, not of the query's content hash: the
query embedding does not depend on it, the reranker's score does.
"""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa

from schemas import columns as c


def canonical_content(values: dict[str, str | None]) -> str:
    """Canonical JSON of one row's content: modality -> value, nulls dropped, keys sorted."""
    present = {m: v for m, v in values.items() if v is not None}
    return json.dumps(present, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def content_hashes(table: pa.Table, prefix: str) -> pa.Array:
    """sha256 of each row's canonical content, from the `<prefix>_text/_image/_audio/_video` columns."""
    columns = {
        m: table.column(f"{prefix}_{m}").to_pylist()
        for m in c.MODALITIES
        if f"{prefix}_{m}" in table.column_names
    }
    rows = [{m: col[i] for m, col in columns.items()} for i in range(table.num_rows)]
    return pa.array([sha256_hex(canonical_content(row)) for row in rows], pa.string())


def pair_key(query_hash: str, doc_hash: str, identity: str, instruction: str | None = None) -> str:
    """The score-cache key of one pair under one reranker identity (`pipelines.runs.info.value_key`) and,
    when the pair has one, its own instruction (which replaces the identity's prompt for that pair; an
    empty one is an instruction too). A pair without one keeps the key it always had."""
    parts: list = [query_hash, doc_hash, identity]
    if instruction is not None:
        parts.append({"instruction": instruction})
    return sha256_hex(json.dumps(parts, separators=(",", ":")))
