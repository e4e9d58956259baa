"""Training pairs: positives from the qrels, and no judged-relevant document ever a negative."""

from __future__ import annotations

import random

import pytest

from pipelines.train.negatives import (
    Sampling,
    eval_candidates,
    listwise,
    merged_relevant,
    sample_negatives,
    training_pairs,
)


def collection(n_docs: int = 60):
    docs = {f"d{i:02d}": f"text {i}" for i in range(n_docs)}
    queries = {f"q{i}": f"query {i}" for i in range(6)}
    rng = random.Random(1)
    qrels = {q: {d: rng.choice([0, 1, 2]) for d in rng.sample(sorted(docs), 12)} for q in queries}
    return docs, queries, qrels


@pytest.mark.parametrize("seed", range(5))
def test_no_judged_relevant_document_is_ever_a_negative(seed):
    docs, queries, qrels = collection()
    train = {q: qrels[q] for q in ("q0", "q1", "q2", "q3")}
    evaluation = {q: qrels[q] for q in ("q4", "q5")}
    never = merged_relevant(train, evaluation)
    held_out = set().union(*merged_relevant(evaluation).values())
    # The adversarial miner: every query's ranking starts with its own relevant documents.
    mined = {q: sorted(docs, key=lambda d: (-qrels[q].get(d, 0), d)) for q in queries}
    pairs = training_pairs(queries, docs, train, never, held_out, mined, Sampling(3, 2, 40), seed)
    rows = pairs.to_pylist()
    for row in rows:
        judged = qrels[row["query_id"]].get(row["doc_id"], 0)
        if row["label"] == 0.0:
            assert judged == 0, row
        else:
            assert row["kind"] == "positive" and judged > 0
        assert row["doc_id"] not in held_out  # an evaluation query's relevant document trains nothing
    for q in train:
        pos = [r for r in rows if r["query_id"] == q and r["label"] == 1.0]
        neg = [r for r in rows if r["query_id"] == q and r["label"] == 0.0]
        assert len(neg) == 5 * len(pos)  # hard + random per positive: the pos_weight holds
        assert len({r["doc_id"] for r in neg}) == len(neg)
        assert any(r["kind"] == "hard" for r in neg)


def test_hard_negatives_come_from_the_mined_depth_and_skip_forbidden():
    mined = ["a", "b", "c", "d", "e"]
    hard, rand = sample_negatives(3, 2, mined[:3], list("abcdefghij"), {"b"}, random.Random(0))
    assert sorted(hard) == ["a", "c"]  # only two allowed in the depth: the third becomes random
    assert len(rand) == 3 and not set(rand) & {"a", "b", "c"}


def test_a_tiny_corpus_gives_what_it_has():
    hard, rand = sample_negatives(0, 10, [], ["a", "b", "c"], {"a"}, random.Random(0))
    assert hard == [] and sorted(rand) == ["b", "c"]


def test_listwise_groups_each_query():
    docs, queries, qrels = collection()
    pairs = training_pairs(
        queries, docs, {"q0": qrels["q0"]}, merged_relevant(qrels), set(), None, Sampling(0, 2, 5), 0
    )
    lists = listwise(pairs)
    assert lists["query"] == ["query 0"]
    assert len(lists["document"][0]) == pairs.num_rows and lists["label"][0][0] == 1.0


def test_eval_candidates_without_mining_hold_the_judged_documents():
    docs, queries, qrels = collection()
    table = eval_candidates(queries, docs, {"q4": qrels["q4"]}, None, 20, 0)
    ids = table.column("doc_id").to_pylist()
    assert len(ids) == 20 == len(set(ids)) and set(qrels["q4"]) <= set(ids)
    mined = {"q4": sorted(docs)[:7]}
    assert (
        eval_candidates(queries, docs, {"q4": qrels["q4"]}, mined, 5, 0).column("doc_id").to_pylist()
        == sorted(docs)[:5]
    )


def test_eval_candidates_carry_the_mined_retrieval_scores():
    docs, queries, qrels = collection()
    mined = {"q4": sorted(docs)[:7]}
    similarity = {"q4": [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]}
    table = eval_candidates(queries, docs, {"q4": qrels["q4"]}, mined, 5, 0, similarity)
    assert table.column("retrieval_score").to_pylist() == pytest.approx([0.9, 0.8, 0.7, 0.6, 0.5])
    unmined = eval_candidates(queries, docs, {"q4": qrels["q4"]}, None, 20, 0)
    assert unmined.column("retrieval_score").null_count == unmined.num_rows  # nothing to fuse with
