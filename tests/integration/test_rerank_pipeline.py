"""The rerank pipeline on a shared local Ray: parity with CrossEncoder.predict, ranks, counts, errors."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sentence_transformers import CrossEncoder

from actors.pool import PoolSpec
from actors.reranker.features import Featurizer
from actors.reranker.spec import RerankerSpec
from actors.reranker.worker import RerankWorker
from pipelines.rerank.config import RerankConfig
from pipelines.rerank.inputs import PairsPlan
from pipelines.rerank.pipeline import score_pairs
from pipelines.rerank.read import read_keyed_pairs
from pipelines.rerank.run import run_rerank
from tests.pairs_data import WORDS, adversarial_pairs, write_shards


class ShuffledWorker(RerankWorker):
    """Adversarial double: finishes its micro-batches in a random order."""

    def score_batches(self, rows, batches):
        results = [(b, self.score_batch([rows[i] for i in b.rows])) for b in batches]
        random.Random(len(rows)).shuffle(results)
        yield from results


def counting_worker(log_dir):
    """A double whose model's `preprocess` logs every pair it is given, in whichever process it runs (the
    CPU preprocess tasks or the scoring actor)."""

    class CountingWorker(RerankWorker):
        @classmethod
        def make_featurizer(cls, model, prompt):
            original = model.preprocess

            def counted(pairs, prompt=None, **kwargs):
                with open(os.path.join(log_dir, f"{os.getpid()}.jsonl"), "a") as f:
                    f.writelines(json.dumps(list(p)) + "\n" for p in pairs)
                return original(pairs, prompt=prompt, **kwargs)

            model.preprocess = counted
            return Featurizer(model, prompt)

    return CountingWorker


@pytest.mark.parametrize("preprocess_tasks", [None, 0])
def test_each_pair_is_preprocessed_once(ray_session, tmp_path, qwen3_causal, capsys, preprocess_tasks):
    # None: off the actor, in CPU tasks of their own (the default); 0: in the actor, before its forward.
    table = adversarial_pairs()
    pairs = write_shards(table, tmp_path / "pairs", shards=3)
    log_dir = tmp_path / "calls"
    log_dir.mkdir()
    cfg = RerankConfig(
        pairs=str(pairs),
        output=str(tmp_path / "out"),
        reranker=RerankerSpec(model=str(qwen3_causal), max_length=64, batch_tokens=300),
        pool=PoolSpec(block_rows=16, preprocess_tasks=preprocess_tasks),
    )
    worker = counting_worker(str(log_dir))
    manifest = run_rerank(cfg, worker_cls=worker)
    # Preprocessing runs in CPU tasks of its own, fused neither into the scoring actors nor into the task
    # before it (which cuts row groups into blocks of `block_rows`), so each block is preprocessed and
    # handed on alone.
    capsys.readouterr()
    files = sorted(str(p) for p in pairs.glob("*.parquet"))
    read = read_keyed_pairs(files, np.array([], np.int64))
    score_pairs(read, cfg, PairsPlan(media=False), worker).explain()
    physical = capsys.readouterr().out.split("Physical Plan (Optimized)")[1]
    assert "ActorPoolMapOperator[MapBatches(CountingWorker)]" in physical
    assert "MapBatches(validate_pairs)->StreamingRepartition" in physical
    assert ("TaskPoolMapOperator[MapBatches(preprocess_block)]" in physical) == (preprocess_tasks is None)

    seen: dict = {}
    for log in log_dir.glob("*.jsonl"):
        for line in log.read_text().splitlines():
            seen[tuple(json.loads(line))] = seen.get(tuple(json.loads(line)), 0) + 1
    good, want = expected_scores(qwen3_causal, table, max_length=64)
    inputs = {(r["query_text"], r["candidate_text"]) for r in good}
    # Every scorable pair went through preprocess exactly once (duplicate rows share a text pair, so
    # count rows per text pair), and nothing but input pairs and the actor's two padding probes did.
    rows_per_pair: dict = {}
    for r in good:
        rows_per_pair[(r["query_text"], r["candidate_text"])] = (
            rows_per_pair.get((r["query_text"], r["candidate_text"]), 0) + 1
        )
    assert {p: seen.get(p, 0) for p in inputs} == rows_per_pair
    assert set(seen) - inputs == {("q", "d"), ("q", "d " * 12)}
    got = sorted(r["score"] for r in read_ranked(tmp_path / "out"))
    np.testing.assert_allclose(got, sorted(float(x) for x in want), atol=1e-5, rtol=0)
    actor = manifest["scoring_actor"]
    assert actor["forward_s"] > 0 and actor["collate_s"] > 0 and actor["write_back_s"] > 0
    shares = ("preprocess_share", "collate_share", "forward_share", "write_back_share")
    assert abs(sum(actor[k] for k in shares) - 1) < 1e-9
    assert 0 < actor["forward_busy"] <= 1
    # the actor's own preprocessing is on its clock only when it did it
    assert (actor["preprocess_s"] > 0) == (preprocess_tasks == 0)
    if preprocess_tasks == 0:  # the actor's one process did it all, and the texts left with the features
        assert len(list(log_dir.glob("*.jsonl"))) == 1
        scored = score_pairs(read, cfg, PairsPlan(media=False), worker).take(1)[0]
        assert "query_text" not in scored and "candidate_text" not in scored and "score" in scored


def expected_scores(model_dir, table, prompt=None, max_length=None):
    model = CrossEncoder(str(model_dir), max_length=max_length)
    good = [r for r in table.to_pylist() if r["candidate_text"] is not None]
    scores = model.predict([(r["query_text"], r["candidate_text"]) for r in good], prompt=prompt)
    return good, scores


def read_ranked(out):
    return pq.read_table(out / "ranked").to_pylist()


@pytest.mark.parametrize(
    ("model_fixture", "prompt", "worker"),
    [("qwen3_causal", None, RerankWorker), ("llama_st_10", "Is it relevant?", ShuffledWorker)],
)
def test_scores_equal_predict_and_nothing_is_lost(
    request, ray_session, tmp_path, model_fixture, prompt, worker
):
    # The first case ranks on the driver (the default for small inputs), the second through the cluster's
    # shuffle: both must give the same ranks.
    model_dir = request.getfixturevalue(model_fixture)
    table = adversarial_pairs()
    pairs = write_shards(table, tmp_path / "pairs")
    cfg = RerankConfig(
        pairs=str(pairs),
        output=str(tmp_path / "out"),
        reranker=RerankerSpec(model=str(model_dir), prompt=prompt, max_length=64, batch_tokens=300),
        pool=PoolSpec(block_rows=16),
        rank_on_driver_rows=1_000_000 if worker is RerankWorker else 0,
    )
    manifest = run_rerank(cfg, worker_cls=worker)

    good, want = expected_scores(model_dir, table, prompt=prompt, max_length=64)
    ranked = read_ranked(tmp_path / "out")
    errors = pq.read_table(tmp_path / "out" / "errors").to_pylist()

    assert manifest["counts"]["pairs_in"] == table.num_rows
    assert manifest["counts"]["scored"] + manifest["counts"]["failed"] == table.num_rows
    assert len(ranked) == len(good) and len(errors) == table.num_rows - len(good)
    assert errors == [
        {
            "query_id": "q3",
            "candidate_id": "nocontent",
            "stage": "validate",
            "error": "candidate has no content: candidate_text/_image/_audio/_video all null",
        }
    ]
    # Each (query, candidate, text) row is scored exactly once; duplicates ids keep both rows.
    key = lambda r: (r["query_id"], r["candidate_id"])  # noqa: E731
    got_by_key: dict = {}
    for r in ranked:
        got_by_key.setdefault(key(r), []).append(r["score"])
    want_by_key: dict = {}
    for r, s in zip(good, want, strict=True):
        want_by_key.setdefault(key(r), []).append(float(s))
    assert got_by_key.keys() == want_by_key.keys()
    for k in want_by_key:
        np.testing.assert_allclose(sorted(got_by_key[k]), sorted(want_by_key[k]), atol=1e-5, rtol=0)

    # Ranks: per query 1..n, ordered by score desc then candidate_id asc.
    by_query: dict = {}
    for r in ranked:
        by_query.setdefault(r["query_id"], []).append(r)
    assert manifest["counts"]["queries"] == len(by_query)
    for rows in by_query.values():
        rows.sort(key=lambda r: r["rank"])
        assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
        assert rows == sorted(rows, key=lambda r: (-r["score"], r["candidate_id"]))
    assert 0 < manifest["tokens"]["padding_efficiency"] <= 1


def test_top_k_and_query_files(ray_session, tmp_path, qwen3_causal):
    table = adversarial_pairs()
    pairs = write_shards(table, tmp_path / "pairs", shards=4)
    run_rerank(
        RerankConfig(
            pairs=str(pairs),
            output=str(tmp_path / "out"),
            reranker=RerankerSpec(model=str(qwen3_causal), max_length=64),
            top_k=3,
        )
    )
    files = list((tmp_path / "out" / "ranked").glob("*.parquet"))
    seen: dict = {}
    for f in files:
        for r in pq.read_table(f).to_pylist():
            seen.setdefault(r["query_id"], set()).add(f.name)
            assert r["rank"] <= 3
    assert all(len(names) == 1 for names in seen.values()), "a query's candidates must sit in one file"
    assert len(seen) == 6


def clustered_pairs(n_queries: int = 30, per_query: int = 6) -> pa.Table:
    """Pairs grouped by query (each query's rows contiguous), as retrieval writes them."""
    rows = [
        {
            "query_id": f"q{q:02d}",
            "candidate_id": f"d{k}",
            "query_text": f"query {q}",
            # Distinct texts: no two candidates of a query tie (batches differ between the runs, and a
            # tie within float noise could be ordered either way).
            "candidate_text": f"document {k} "
            + " ".join(WORDS[(q * 7 + k * 3 + j) % len(WORDS)] for j in range(2 + k)),
        }
        for q in range(n_queries)
        for k in range(per_query)
    ]
    return pa.Table.from_pylist(rows)


def test_ranking_paths_agree_clustered_input_needs_no_shuffle(ray_session, tmp_path, qwen3_causal):
    # Ranking on the driver (small runs), per piece without a shuffle (query-clustered input above the
    # driver threshold) and through the hash shuffle (the same rows, shuffled): the same ranked table.
    table = clustered_pairs()
    clustered = write_shards(table, tmp_path / "clustered", shards=2)
    order = np.random.default_rng(0).permutation(table.num_rows)
    shuffled = write_shards(table.take(pa.array(order)), tmp_path / "shuffled", shards=2)

    def run(pairs, name, rank_on_driver_rows):
        cfg = RerankConfig(
            pairs=str(pairs),
            output=str(tmp_path / name),
            reranker=RerankerSpec(model=str(qwen3_causal), max_length=64),
            pool=PoolSpec(block_rows=32),
            top_k=4,
            rank_on_driver_rows=rank_on_driver_rows,
        )
        manifest = run_rerank(cfg)
        ranked = pq.read_table(tmp_path / name / "ranked").to_pylist()
        rows = sorted((r["query_id"], r["rank"], r["candidate_id"], round(r["score"], 5)) for r in ranked)
        return manifest, rows

    driver, want = run(clustered, "driver", 1_000_000)
    # 150: the 180 pairs rank per piece, the rows set aside (at most 2 queries x 6 rows a run, 2 runs a
    # piece of 32) on the driver; 0: the rows set aside through a shuffle of their own.
    local, got_local = run(clustered, "local", 150)
    local_shuffled_edges, got_local_shuffled_edges = run(clustered, "local_shuffled_edges", 0)
    shuffle, got_shuffle = run(shuffled, "shuffle", 0)

    assert driver["ranking"] == {"path": "driver"}
    for m in (local, local_shuffled_edges):
        assert m["ranking"]["path"] == "clustered"
        assert 0 < m["ranking"]["set_aside_rows"] < table.num_rows // 2
    assert shuffle["ranking"] == {"path": "shuffle"}
    assert len(want) == 30 * 4
    assert got_local == want and got_local_shuffled_edges == want and got_shuffle == want
    for m in (driver, local, local_shuffled_edges, shuffle):
        assert m["counts"]["queries"] == 30 and m["counts"]["ranked_rows"] == 120
    for name in ("driver", "local", "local_shuffled_edges", "shuffle"):
        assert pq.read_table(tmp_path / name / "errors").num_rows == 0
    assert not (tmp_path / "local" / "_edges").exists()
    # The contract: each query's rows sit together in one file, ordered by rank.
    for name in ("local", "local_shuffled_edges", "shuffle"):
        owner: dict = {}
        for f in sorted((tmp_path / name / "ranked").glob("*.parquet")):
            rows = pq.read_table(f).to_pylist()
            for r in rows:
                assert owner.setdefault(r["query_id"], f.name) == f.name
            runs = [
                (q, [r["rank"] for r in rows if r["query_id"] == q])
                for q in dict.fromkeys(r["query_id"] for r in rows)
            ]
            assert [r["query_id"] for r in rows] == [q for q, ranks in runs for _ in ranks]  # contiguous
            assert all(ranks == list(range(1, len(ranks) + 1)) for _, ranks in runs)
        assert len(owner) == 30
