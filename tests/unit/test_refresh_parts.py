"""Refresh building blocks without Ray: content hashes, the index join, LATEST, stage markers, the CLI's
one-line validation errors."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from actors.reranker import RerankerSpec
from jobs import refresh as job
from pipelines import publish
from pipelines.content_hash import content_hashes, pair_key
from pipelines.keyed_join import join_tables
from pipelines.publish import (
    RunLayout,
    finished,
    mark_finished,
    mark_started,
    publish_decision,
    publish_latest,
    read_latest,
)
from pipelines.run_info import value_key
from pipelines.score_cache import ScoreCache, _first_per_key


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
