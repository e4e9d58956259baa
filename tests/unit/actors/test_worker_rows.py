"""Row plumbing shared by the workers, without Ray or a model: a pair or input that fails costs one error row
with its reason, every other row keeps its value in its place, and pairs and embeddings share one set of
reasons."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from actors.elements import build_elements
from actors.embedder import EmbedderSpec, EmbedWorker
from actors.reranker.features import Collator, Featurizer
from actors.reranker.pairs import build_pairs
from actors.reranker.spec import RerankerSpec
from actors.reranker.worker import SCORE, RerankWorker
from actors.rows import isolate_failures
from pipelines.rerank.validate import validate_pairs
from schemas import columns as c


class TextOnly:
    """Stands in for a sentence-transformers model that takes text only (as `model.supports` answers)."""

    modalities = ("text",)

    def supports(self, modality) -> bool:
        return modality == "text"


def fake_score(query: str, candidate: str) -> float:
    return len(query) + sum(map(ord, candidate)) / 1000


class FakeModel(TextOnly):
    """Preprocessing stand-in: a pair's ids are the code points of "query|candidate", right-padded."""

    def preprocess(self, pairs: list, prompt=None) -> dict:
        import torch

        if any(p[1] == "bad-length" for p in pairs):
            raise ValueError("cannot tokenize")
        texts = [f"{q}|{d}" for q, d in pairs]
        width = max(map(len, texts))
        ids = torch.zeros((len(texts), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, text in enumerate(texts):
            ids[i, : len(text)] = torch.tensor([ord(ch) for ch in text])
            mask[i, : len(text)] = 1
        return {"input_ids": ids, "attention_mask": mask}


class FakeReranker(RerankWorker):
    """The real featurizer and collator over `FakeModel`; `boom` cannot be scored, `bad-length` cannot be
    preprocessed."""

    def __init__(self):
        self.spec = RerankerSpec(model="fake", batch_tokens=1000)
        self.model, self.prefix, self.prompt = FakeModel(), None, None
        self.featurize = Featurizer(self.model, None)
        self.collate = Collator("right", 0)

    def forward(self, features: dict) -> np.ndarray:
        texts = ["".join(chr(t) for t in row if t) for row in features["input_ids"].tolist()]
        if any(t.endswith("|boom") for t in texts):
            raise RuntimeError("boom\nsecond line")
        return np.asarray([fake_score(*t.split("|")) for t in texts], dtype=np.float32)


def test_reranker_isolates_the_failing_pairs_and_keeps_every_row_in_place():
    candidates = ["aaaa", "boom", "bbbb", "bad-length", "cccc", "dddd", None]
    n = len(candidates)
    table = pa.table(
        {
            "query_id": ["q"] * n,
            "candidate_id": [f"d{i}" for i in range(n)],
            "query_text": ["q"] * n,
            "candidate_text": candidates,
            c.ROW_ERROR: [None, None, None, None, "query_id is null", None, None],
            c.ROW_STAGE: [None, None, None, None, "validate", None, None],
            c.ROW_CACHED_SCORE: pa.array([None, None, None, None, None, 0.5, None], pa.float32()),
        }
    )
    out = FakeReranker()(table)
    scores = out.column(c.SCORE).to_pylist()
    errors, stages = out.column(c.ROW_ERROR).to_pylist(), out.column(c.ROW_STAGE).to_pylist()
    for row in (0, 2):  # in the failing pair's micro-batch, still scored
        assert scores[row] == np.float32(fake_score("q", candidates[row]))
        assert errors[row] is None
    assert scores[5] == 0.5 and errors[5] is None  # a cached score is kept, not recomputed
    assert errors[1] == "scoring failed: RuntimeError: boom" and stages[1] == "score"
    assert errors[3] == "preprocessing failed: ValueError: cannot tokenize" and stages[3] == "score"
    assert errors[4] == "query_id is null" and stages[4] == "validate"  # an earlier stage's row, untouched
    assert errors[6] == "candidate has no content: candidate_text/_image/_audio/_video all null"
    assert [scores[i] for i in (1, 3, 4, 6)] == [None] * 4
    added = set(out.column_names) - set(table.column_names)
    assert added <= set(SCORE.adds) <= set(out.column_names)


class FakeEmbedder(EmbedWorker):
    """A 2-d embedding (length, first character); `boom` cannot be embedded."""

    def __init__(self):
        self.spec = EmbedderSpec(model="fake", batch_tokens=1000)
        self.side, self.prefix, self.model, self.dim = "document", "doc", TextOnly(), 2

    def token_lengths(self, inputs: list) -> np.ndarray:
        return np.asarray([len(x) for x in inputs])

    def embed_batch(self, inputs: list) -> np.ndarray:
        if "boom" in inputs:
            raise RuntimeError("boom")
        return np.asarray([[len(x), ord(x[0])] for x in inputs], dtype=np.float32)


def test_embedder_isolates_the_failing_inputs():
    table = pa.table({"doc_id": ["a", "b", "c", "d"], "doc_text": ["abcd", "boom", "wxyz", None]})
    out = FakeEmbedder()(table)
    vectors, errors = out.column(c.EMBEDDING).to_pylist(), out.column(c.ROW_ERROR).to_pylist()
    assert vectors[0] == [4.0, ord("a")] and vectors[2] == [4.0, ord("w")]
    assert vectors[1] is None and errors[1] == "embedding failed: RuntimeError: boom"
    assert vectors[3] is None and errors[3] == "doc has no content: doc_text/_image/_audio/_video all null"
    assert out.column(c.ROW_STAGE).to_pylist() == [None, "embed", None, "embed"]


def test_isolate_failures_runs_the_batch_once_when_it_succeeds():
    calls: list[list] = []

    def double(items):
        calls.append(items)
        if -1 in items:
            raise ValueError(f"bad item\n{items}")
        return [2 * x for x in items]

    values, bad = isolate_failures(double, [1, 2, 3], "doubling failed", 0)
    assert values.tolist() == [2, 4, 6] and bad == {} and calls == [[1, 2, 3]]
    values, bad = isolate_failures(double, [1, -1, 3], "doubling failed", 0)
    assert values.tolist() == [2, 0, 6] and bad == {1: "doubling failed: ValueError: bad item"}


def test_pairs_and_elements_give_the_same_reasons():
    table = pa.table(
        {
            "query_text": ["q", "q", None],
            "candidate_text": ["ok", None, "d"],
            "candidate_image": [None, "a.png", None],
        }
    )
    pairs, pair_errors = build_pairs(table, [0, 1, 2], TextOnly())
    _, candidate_errors = build_elements(table, "candidate", [0, 1, 2], TextOnly())
    _, query_errors = build_elements(table, "query", [0, 1, 2], TextOnly())
    assert pairs == [["q", "ok"]]
    assert pair_errors == {1: candidate_errors[1], 2: query_errors[2]}
    assert pair_errors[1] == "candidate_image 'a.png' was not fetched by the media stage"
    # The builder's no-content reason is the validate stage's, word for word.
    validated = validate_pairs(
        table.append_column("query_id", [["x"] * 3]).append_column("candidate_id", [["y"] * 3])
    )
    assert validated.column(c.ROW_ERROR)[2].as_py() == pair_errors[2]
