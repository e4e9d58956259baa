"""Each exact speed-up returns CrossEncoder.predict's scores (1e-5, fp32, CPU). No Ray: the worker is
called in-process, as a Ray actor would call it."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from sentence_transformers import CrossEncoder

from actors.reranker.fast_paths import (
    PrefixReuse,
    apply_fast_paths,
    shared_prefix_length,
    to_hidden_state_chain,
)
from actors.reranker.spec import RerankerSpec
from actors.reranker.worker import RerankWorker
from actors.token_budget import pack_by_groups
from schemas import columns as c
from tests.pairs_data import WORDS as PAIR_WORDS

ATOL = 1e-5
WORDS = [*PAIR_WORDS, "of", "queries", "with", "documents"]
MODELS = ["qwen3_causal", "llama_st_10"]


def skewed_pairs(n_queries: int = 3, per_query: int = 6) -> list[tuple[str, str]]:
    """Several queries, documents from 1 to ~60 words (one repeated, one empty): prefixes of unequal
    lengths, rows that differ only late, and a document that is a prefix of another."""
    rng = np.random.default_rng(7)
    pairs = []
    for q in range(n_queries):
        query = f"query {q}: which {WORDS[q]} hold models?"
        for k in range(per_query):
            n = int(np.clip(rng.lognormal(2.0, 1.0), 1, 60))
            pairs.append((query, " ".join(WORDS[(q + k + j) % len(WORDS)] for j in range(n))))
        pairs.append((query, pairs[-1][1]))  # duplicate document
        pairs.append((query, ""))
    return pairs


def predict(model_dir, pairs, prompt=None):
    return CrossEncoder(str(model_dir)).predict(pairs, prompt=prompt)


@pytest.mark.parametrize("model_fixture", MODELS)
@pytest.mark.parametrize("fp32_head", [False, True])
def test_hidden_state_chain_equals_predict(request, model_fixture, fp32_head):
    model_dir = request.getfixturevalue(model_fixture)
    pairs = skewed_pairs()
    want = predict(model_dir, pairs)
    hidden = to_hidden_state_chain(CrossEncoder(str(model_dir)), fp32_head=fp32_head)
    assert [type(m).__name__ for m in hidden] == ["Transformer", "Pooling", "Dense"]
    assert hidden[0].transformer_task == "feature-extraction"
    np.testing.assert_allclose(hidden.predict(pairs), want, atol=ATOL, rtol=0)
    np.testing.assert_allclose(
        hidden.predict(pairs, prompt="Is it relevant?"),
        predict(model_dir, pairs, "Is it relevant?"),
        atol=ATOL,
        rtol=0,
    )


def test_hidden_state_chain_shares_weights_and_leaves_the_original_intact(qwen3_causal):
    original = CrossEncoder(str(qwen3_causal))
    pairs = skewed_pairs(1, 4)
    before = original.predict(pairs)
    hidden = to_hidden_state_chain(original)
    assert hidden[0].model.embed_tokens.weight is original[0].model.get_decoder().embed_tokens.weight
    assert original[0].transformer_task == "text-generation"  # the view did not rewrite the original module
    np.testing.assert_array_equal(original.predict(pairs), before)


@pytest.mark.parametrize("model_fixture", MODELS)
def test_fp32_head_on_the_logit_path_equals_predict(request, model_fixture):
    model_dir = request.getfixturevalue(model_fixture)
    pairs = skewed_pairs()
    model = apply_fast_paths(CrossEncoder(str(model_dir)), "logit", fp32_head=True)
    assert model.keep_in_fp32_modules == ["0.model.lm_head"]
    np.testing.assert_allclose(model.predict(pairs), predict(model_dir, pairs), atol=ATOL, rtol=0)


@pytest.mark.parametrize("score_path", ["logit", "hidden"])
def test_fp32_head_under_bf16_weights_scores_in_fp32(qwen3_causal, score_path):
    model = CrossEncoder(str(qwen3_causal), model_kwargs={"dtype": torch.bfloat16})
    model = apply_fast_paths(model, score_path, fp32_head=True)
    features = model.preprocess(skewed_pairs(1, 4))
    with torch.inference_mode():
        scores = model(features)["scores"]
    assert scores.dtype == torch.float32
    assert next(model[0].model.parameters()).dtype == torch.bfloat16  # the body stays bf16


@pytest.mark.parametrize("model_fixture", MODELS)
@pytest.mark.parametrize("score_path", ["logit", "hidden"])
def test_prefix_reuse_equals_predict(request, model_fixture, score_path):
    model_dir = request.getfixturevalue(model_fixture)
    pairs = skewed_pairs(n_queries=1, per_query=10)
    model = apply_fast_paths(CrossEncoder(str(model_dir)), score_path)
    reuse = PrefixReuse(model)
    prompt = model.prompts.get(model.default_prompt_name) if model.default_prompt_name else None
    assert reuse.applies(pairs)
    np.testing.assert_allclose(
        reuse.score(pairs, prompt=prompt), predict(model_dir, pairs), atol=ATOL, rtol=0
    )
    # A second micro-batch of the same query reuses the cached prefix and is still exact.
    np.testing.assert_allclose(
        reuse.score(pairs[:3], prompt=prompt), predict(model_dir, pairs[:3]), atol=ATOL, rtol=0
    )


def test_shared_prefix_leaves_every_row_a_token():
    rows = [torch.tensor([1, 2, 3]), torch.tensor([1, 2, 3]), torch.tensor([1, 2, 3, 4])]
    assert shared_prefix_length(rows) == 2
    assert shared_prefix_length([torch.tensor([1, 2, 5]), torch.tensor([1, 2, 6, 7])]) == 2
    assert shared_prefix_length([torch.tensor([9, 2]), torch.tensor([1, 2])]) == 0


def test_pack_by_groups_never_mixes_groups():
    lengths = np.array([5, 50, 7, 9, 60, 3])
    groups = ["a", "b", "a", None, "b", "a"]
    batches = pack_by_groups(lengths, groups, batch_tokens=100)
    assert sorted(int(r) for b in batches for r in b.rows) == list(range(6))
    for b in batches:
        assert len({groups[r] for r in b.rows}) == 1
        assert b.padded_length == max(lengths[b.rows])


def _table(pairs):
    return pa.table(
        {
            c.QUERY_ID: [f"q-{q}" for q, _ in pairs],
            c.CANDIDATE_ID: [f"d{i}" for i in range(len(pairs))],
            "query_text": [q for q, _ in pairs],
            "candidate_text": [d for _, d in pairs],
        }
    )


@pytest.mark.parametrize("model_fixture", MODELS)
@pytest.mark.parametrize(
    "fast",
    [
        {},
        {"score_path": "hidden"},
        {"fp32_head": True},
        {"prefix_reuse": True},
        {"score_path": "hidden", "prefix_reuse": True},
    ],
)
def test_worker_with_fast_paths_equals_predict(request, model_fixture, fast):
    """The actor's own path (token lengths, budgeted micro-batches, fast paths) on rows of several
    interleaved queries, with the model's default prompt when none is given (llama_st_10 has one)."""
    model_dir = request.getfixturevalue(model_fixture)
    pairs = skewed_pairs()
    order = np.random.default_rng(3).permutation(len(pairs))  # queries interleaved within the block
    pairs = [pairs[i] for i in order]
    worker = RerankWorker(RerankerSpec(model=str(model_dir), batch_tokens=200, **fast).validate()).load()
    prefix_batches = []
    if worker.prefix is not None:
        score = worker.prefix.score
        worker.prefix.score = lambda batch, prompt=None: prefix_batches.append(batch) or score(batch, prompt)
    out = worker(_table(pairs))
    if fast.get("prefix_reuse"):
        assert prefix_batches and all(len({q for q, _ in b}) == 1 for b in prefix_batches)
    assert out.column(c.ROW_ERROR).null_count == len(pairs)
    got = out.column(c.SCORE).to_numpy()
    np.testing.assert_allclose(got, predict(model_dir, pairs), atol=ATOL, rtol=0)


def test_fast_path_errors_name_the_fix(qwen3_causal):
    with pytest.raises(ValueError, match="score_path: 'fast' is not one of logit, hidden"):
        RerankerSpec(model=str(qwen3_causal), score_path="fast").validate()
    hidden = to_hidden_state_chain(CrossEncoder(str(qwen3_causal)))
    with pytest.raises(ValueError, match=r"needs a Transformer\(text-generation\) \+ LogitScore"):
        to_hidden_state_chain(hidden)
