"""The demo assets (jobs/demo_assets/) are what the demo and the jobs expect: a loadable SmolLM2 reranker
that scores exactly like the language model it wraps, pairs that satisfy the pairs contract with judged
relevant candidates for every query, and images that open. Built once per session; never starts Ray."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from jobs.demo_assets import DemoAssets, build_demo
from jobs.demo_assets.images import IMAGE_SIZE, SHAPES
from jobs.demo_assets.pydoc_corpus import MAX_DOC_CHARS, MIN_DOC_CHARS
from jobs.demo_assets.reranker import DEFAULT_INSTRUCT, FALSE_TOKEN, TRUE_TOKEN
from schemas import columns as c
from schemas.qrels import read_qrels
from schemas.tables import PAIRS_SCHEMA, check_corpus_schema, check_pairs_schema, check_queries_schema

PAIRS = [
    ("what is a list", "A list is a mutable sequence"),
    ("what is a list", "The weather is nice"),
]


@pytest.fixture(scope="session")
def assets(tmp_path_factory) -> DemoAssets:
    return build_demo(str(tmp_path_factory.mktemp("demo")))


@pytest.fixture(scope="session")
def reranker(assets):
    from sentence_transformers import CrossEncoder

    return CrossEncoder(assets.reranker)


def test_reranker_is_transformer_plus_logit_score_on_yes_no(reranker):
    import torch
    from sentence_transformers.cross_encoder.modules import LogitScore, Transformer

    transformer, head = list(reranker)
    assert isinstance(transformer, Transformer) and isinstance(head, LogitScore)
    assert transformer.transformer_task == "text-generation"
    tokenizer = transformer.tokenizer
    assert head.true_token_id == tokenizer.convert_tokens_to_ids(TRUE_TOKEN)
    assert head.false_token_id == tokenizer.convert_tokens_to_ids(FALSE_TOKEN)
    assert tokenizer.decode([head.true_token_id]) == TRUE_TOKEN
    assert tokenizer.decode([head.false_token_id]) == FALSE_TOKEN
    assert isinstance(reranker.activation_fn, torch.nn.Sigmoid)
    assert transformer.model.dtype == torch.float32


def test_chat_template_carries_query_document_and_prompt(reranker):
    transformer = reranker[0]
    assert transformer.input_formatter.pair_roles_failure() is None
    features = reranker.preprocess([PAIRS[0]], prompt="Find Python documentation")
    text = transformer.tokenizer.decode(features["input_ids"][0])
    assert "<Query>: what is a list\n<Document>: A list is a mutable sequence<|im_end|>" in text
    assert "<Instruct>: Find Python documentation\n" in text
    # The answer is the next token: the rendered prompt ends by opening the assistant turn.
    assert text.endswith("<|im_start|>assistant\n")
    default = transformer.tokenizer.decode(reranker.preprocess([PAIRS[0]])["input_ids"][0])
    assert f"<Instruct>: {DEFAULT_INSTRUCT}\n" in default


def test_scores_are_the_language_models_yes_no_odds(reranker):
    import torch

    transformer, head = list(reranker)
    scores = reranker.predict(PAIRS)
    features = reranker.preprocess(PAIRS)
    with torch.inference_mode():
        logits = transformer.model(
            input_ids=features["input_ids"], attention_mask=features["attention_mask"]
        ).logits[:, -1]
    expected = torch.sigmoid(logits[:, head.true_token_id] - logits[:, head.false_token_id])
    assert scores == pytest.approx(expected.numpy(), abs=1e-5)
    print(f"demo reranker on {PAIRS}: {scores}")  # zero-shot quality is weak; shown, not asserted


def test_pairs_satisfy_the_contract(assets):
    table = pq.read_table(assets.pairs)
    check_pairs_schema(table.schema, assets.pairs)
    for name in table.column_names:
        assert table.schema.field(name).type == PAIRS_SCHEMA.field(name).type, name
    for name in (
        c.QUERY_ID,
        c.CANDIDATE_ID,
        "query_text",
        "candidate_text",
        c.RETRIEVAL_SCORE,
        c.RETRIEVAL_RANK,
    ):
        assert table.column(name).null_count == 0, f"{name} has nulls"
    assert 150 <= table.num_rows <= 250

    qrels = read_qrels(assets.qrels)
    rows = table.to_pylist()
    by_query: dict[str, list[dict]] = {}
    for row in rows:
        by_query.setdefault(row[c.QUERY_ID], []).append(row)
    queries = pq.read_table(assets.queries)
    check_queries_schema(queries.schema, assets.queries)
    assert set(by_query) == set(queries.column(c.QUERY_ID).to_pylist()) == set(qrels)
    shuffled = 0
    for qid, group in by_query.items():
        ids = [r[c.CANDIDATE_ID] for r in group]
        assert len(ids) == len(set(ids)), f"{qid}: duplicate candidates"
        assert sorted(r[c.RETRIEVAL_RANK] for r in group) == list(range(1, len(group) + 1))
        gains = [qrels[qid].get(d, 0) for d in ids]
        assert any(gains), f"{qid}: no relevant candidate"
        assert not all(gains), f"{qid}: no negative candidate"
        shuffled += gains != sorted(gains, reverse=True)
    assert shuffled >= len(by_query) // 2, "candidates should not arrive in relevance order"


def test_corpus_and_qrels_agree(assets):
    corpus = pq.read_table(assets.corpus)
    check_corpus_schema(corpus.schema, assets.corpus)
    doc_ids = corpus.column(c.DOC_ID).to_pylist()
    assert len(doc_ids) == len(set(doc_ids)) > 500
    lengths = pc.utf8_length(corpus.column("doc_text"))
    assert pc.max(lengths).as_py() <= MAX_DOC_CHARS
    assert pc.min(lengths).as_py() >= MIN_DOC_CHARS
    qrels = read_qrels(assets.qrels)
    judged = {d for docs in qrels.values() for d in docs}
    assert judged <= set(doc_ids)
    pairs = pq.read_table(assets.pairs)
    assert set(pairs.column(c.CANDIDATE_ID).to_pylist()) <= set(doc_ids)


def test_images_open_and_pair_with_every_caption(assets):
    from PIL import Image

    table = pq.read_table(assets.image_pairs)
    paths = sorted(set(table.column("candidate_image").to_pylist()))
    captions = set(table.column("query_text").to_pylist())
    assert len(paths) == len(captions) == len(SHAPES)
    assert table.num_rows == len(paths) * len(captions)
    for path in paths:
        assert Path(path).is_absolute()
        with Image.open(path) as image:
            image.load()
            assert image.size == (IMAGE_SIZE, IMAGE_SIZE)
    qrels = read_qrels(assets.image_qrels)
    for qid, docs in qrels.items():
        (doc,) = docs
        caption = table.filter(pc.equal(table.column(c.QUERY_ID), qid)).column("query_text")[0].as_py()
        assert caption.split()[-2:] == doc.split("-"), (caption, doc)


def test_embedder_is_a_sentence_transformers_dir(assets):
    assert (Path(assets.embedder) / "modules.json").is_file()


def test_second_build_reuses_everything(assets):
    weights = Path(assets.reranker) / "model.safetensors"
    before = weights.stat().st_mtime_ns
    start = time.perf_counter()
    again = build_demo(str(Path(assets.reranker).parents[1]))
    assert again == assets
    assert weights.stat().st_mtime_ns == before
    assert time.perf_counter() - start < 5
