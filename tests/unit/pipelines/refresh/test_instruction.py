"""A query's `instruction` in the nightly refresh, without Ray: it is part of a pair's score-cache key (a pair
without one keeps the key it always had, so existing caches keep hitting), retrieval carries it into every
candidate pair of its query, and the driver's input check reads its digest into the night's identity, where
a changed one is named."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from actors.embedder import EmbedderSpec
from actors.reranker.spec import RerankerSpec
from pipelines.refresh.config import RefreshConfig
from pipelines.refresh.content_hash import content_hashes, pair_key
from pipelines.refresh.inputs import check_inputs
from pipelines.refresh.retrieve import prepare_matrix, retrieve_on_driver
from pipelines.refresh.score_cache import add_cache_keys
from pipelines.runs.lease import changed_fields
from schemas import columns as c
from schemas.tables import PAIRS_SCHEMA

IDENTITY = "f" * 64


def old_pair_key(query_hash: str, doc_hash: str, identity: str) -> str:
    """The key as it was before instructions: what every existing cache entry is stored under."""
    payload = json.dumps([query_hash, doc_hash, identity], separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def test_pair_key_without_an_instruction_is_the_key_it_always_was():
    assert pair_key("q", "d", IDENTITY) == old_pair_key("q", "d", IDENTITY)
    assert pair_key("q", "d", IDENTITY, None) == old_pair_key("q", "d", IDENTITY)
    keys = {pair_key("q", "d", IDENTITY, i) for i in (None, "", "Judge relevance.", "Judge topicality.")}
    assert len(keys) == 4, "each instruction, the empty one included, has its own key"


def pairs(instructions: list[str | None] | None) -> pa.Table:
    table = pa.table(
        {
            c.QUERY_ID: ["q1", "q1", "q1", "q1"],
            c.CANDIDATE_ID: ["d1", "d1", "d1", "d2"],
            "query_text": ["what is ray"] * 4,
            "candidate_text": ["ray runs actors", "ray runs actors", "ray runs actors", "blocks"],
        }
    )
    if instructions is None:
        return table
    return table.append_column(c.INSTRUCTION, pa.array(instructions, pa.string()))


def test_cache_keys_differ_by_instruction_and_equal_without_one_as_before():
    without = add_cache_keys(pairs(None), IDENTITY).column(c.ROW_CACHE_KEY).to_pylist()
    queries = content_hashes(pairs(None), "query").to_pylist()
    docs = content_hashes(pairs(None), "candidate").to_pylist()
    assert without == [old_pair_key(q, d, IDENTITY) for q, d in zip(queries, docs, strict=True)]

    # The same pair under no instruction (a null in the column), two instructions, and one repeated.
    keyed = add_cache_keys(
        pairs([None, "Judge relevance.", "Judge topicality.", "Judge relevance."]), IDENTITY
    )
    keys = keyed.column(c.ROW_CACHE_KEY).to_pylist()
    assert keys[0] == without[0], "a null instruction keeps the key a pair without the column has"
    assert len({keys[0], keys[1], keys[2]}) == 3, "one pair under three prompts: three cache entries"
    assert keys[3] == pair_key(queries[3], docs[3], IDENTITY, "Judge relevance.") != without[3]
    assert add_cache_keys(keyed, IDENTITY).column(c.ROW_CACHE_KEY).to_pylist() == keys, "re-keying replaces"


def write_retrieval_inputs(tmp_path, instructions: list[str | None] | None):
    rng = np.random.default_rng(0)
    doc_ids = [f"d{i}" for i in range(6)]
    vectors = rng.normal(size=(6, 4)).astype(np.float32)
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), 4)
    (tmp_path / "emb").mkdir(exist_ok=True)
    pq.write_table(
        pa.table({c.DOC_ID: doc_ids, c.EMBEDDING: embedding, c.ERROR: pa.nulls(6, pa.string())}),
        tmp_path / "emb" / "part-0.parquet",
    )
    pq.write_table(
        pa.table({c.DOC_ID: doc_ids, "doc_text": [f"text {d}" for d in doc_ids]}), tmp_path / "corpus.parquet"
    )
    queries = pa.table({c.QUERY_ID: ["q0", "q1", "q2"], "query_text": ["a", "b", "c"]})
    if instructions is not None:
        queries = queries.append_column(c.INSTRUCTION, pa.array(instructions, pa.string()))
    pq.write_table(queries, tmp_path / "queries.parquet")
    prepared = (
        queries.column(c.QUERY_ID).combine_chunks(),
        prepare_matrix(rng.normal(size=(3, 4)), "cosine"),
    )
    return (
        prepared,
        str(tmp_path / "emb"),
        [str(tmp_path / "corpus.parquet")],
        [str(tmp_path / "queries.parquet")],
    )


@pytest.mark.parametrize("instructions", [["Judge relevance.", None, ""], None], ids=["with", "without"])
def test_retrieval_carries_each_query_instruction_into_its_pairs(tmp_path, instructions):
    prepared, embeddings, corpus, queries = write_retrieval_inputs(tmp_path, instructions)
    got = retrieve_on_driver(prepared, embeddings, corpus, queries, 2, "cosine", 4)
    assert got.schema == PAIRS_SCHEMA and got.num_rows == 6
    want = dict(zip(["q0", "q1", "q2"], instructions or [None] * 3, strict=True))
    assert [(r[c.QUERY_ID], r[c.INSTRUCTION]) for r in got.to_pylist()] == [
        (q, want[q]) for q in ("q0", "q0", "q1", "q1", "q2", "q2")
    ]


def refresh_config(tmp_path, queries: str, **kw) -> RefreshConfig:
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    (model / "model.safetensors").write_bytes(b"\0" * 64)
    (model / "config.json").write_text("{}")
    pq.write_table(pa.table({"doc_id": ["d"], "doc_text": ["t"]}), tmp_path / "corpus.parquet")
    return RefreshConfig(
        corpus=str(tmp_path / "corpus.parquet"),
        queries=queries,
        output=str(tmp_path / "root"),
        embedder=EmbedderSpec(model=str(model)),
        reranker=RerankerSpec(model=str(model)),
        **kw,
    )


def test_the_nights_identity_names_a_changed_instruction(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the fingerprint memo lives under ~/.cache
    path = tmp_path / "queries.parquet"

    def digest(instructions) -> str | None:
        table = pa.table({"query_id": ["q1", "q2"], "query_text": ["a", "b"]})
        if instructions is not None:
            table = table.append_column("instruction", pa.array(instructions, pa.string()))
        pq.write_table(table, path)
        inputs = check_inputs(refresh_config(tmp_path, str(path)))
        assert inputs.pending is None  # Parquet under the contract's names: read as it is
        return inputs.instructions

    assert digest(None) is None
    first = digest(["Judge relevance.", None])
    assert first is not None and first == digest(["Judge relevance.", None])
    changed = digest(["Judge topicality.", None])
    assert changed != first and digest([None, "Judge relevance."]) != first

    cfg = refresh_config(tmp_path, str(path))
    files = [cfg.corpus, cfg.queries]
    assert changed_fields(cfg.identity(files, first), cfg.identity(files, changed)) == ["instructions"]
    assert changed_fields(cfg.identity(files), cfg.identity(files, None)) == []


def test_a_renamed_instruction_column_in_json_lines_is_read(tmp_path):
    """`--column instruction=prompt` as for the other query columns; JSON Lines is copied to Parquet later
    (`pending`), its digest taken now."""
    path = tmp_path / "queries.jsonl"
    rows = [
        {"query_id": "q1", "query_text": "a", "prompt": "Judge relevance."},
        {"query_id": "q2", "query_text": "b"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    inputs = check_inputs(refresh_config(tmp_path, str(path), columns=("instruction=prompt",)))
    assert inputs.pending is not None and inputs.instructions is not None
    plain = check_inputs(refresh_config(tmp_path, str(path)))
    assert plain.instructions is None  # without the mapping `prompt` is an unknown column, ignored
