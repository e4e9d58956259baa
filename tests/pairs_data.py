"""Adversarial pairs for tests: duplicate ids, unicode, empty strings, texts far over max_length."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

# The words test texts are built from.
WORDS = [
    "ray",
    "data",
    "streams",
    "blocks",
    "to",
    "actors",
    "that",
    "hold",
    "models",
    "and",
    "score",
    "pairs",
]


def adversarial_pairs(n_queries: int = 6, per_query: int = 7) -> pa.Table:
    rows = []
    for q in range(n_queries):
        for k in range(per_query):
            text = " ".join(WORDS[(q + k + j) % len(WORDS)] for j in range(3 + 5 * k))
            rows.append(
                {
                    "query_id": f"q{q}",
                    "candidate_id": f"d{k}",
                    "query_text": f"query {q} ünïcødé 東京",
                    "candidate_text": text,
                }
            )
    rows.append(
        {
            "query_id": "q0",
            "candidate_id": "d1",
            "query_text": "query 0 ünïcødé 東京",
            "candidate_text": "duplicate id",
        }
    )
    rows.append({"query_id": "q1", "candidate_id": "empty", "query_text": "query 1", "candidate_text": ""})
    rows.append(
        {"query_id": "q2", "candidate_id": "long", "query_text": "query 2", "candidate_text": "word " * 3000}
    )
    rows.append(
        {"query_id": "q3", "candidate_id": "nocontent", "query_text": "query 3", "candidate_text": None}
    )
    rows.append(
        {
            "query_id": "q4",
            "candidate_id": "emoji",
            "query_text": "🙂 query",
            "candidate_text": "Привет мир 🙂",
        }
    )
    return pa.Table.from_pylist(rows)


def write_shards(table: pa.Table, out: Path, shards: int = 3) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    step = -(-table.num_rows // shards)
    for i in range(shards):
        pq.write_table(table.slice(i * step, step), out / f"part-{i}.parquet")
    return out
