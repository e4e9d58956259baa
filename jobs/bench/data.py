"""Benchmark pairs from real text with a realistic length distribution: many short documents, a long tail.

Queries are questions made from Python's own `pydoc_data.topics` titles; documents are windows of that
documentation's words whose lengths are drawn from a lognormal (median `median_words`, shape `sigma`),
clipped to `[min_words, max_words]`. `fit_documents_to_tokens` trims documents so that every pair is a
fixed number of model tokens instead (the GPU roofline figure at 512-token pairs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from jobs.demo_assets.pydoc_corpus import questions_and_words
from schemas import columns as c
from schemas.settings import setting


@dataclass(frozen=True)
class LengthSpec:
    """Document length distribution, in words (the pair's token count is reported after tokenising)."""

    median_words: float = setting(20.0, help="median document length, in words")
    sigma: float = setting(1.1, help="lognormal shape of document lengths")
    min_words: int = setting(3, help="shortest document, in words")
    max_words: int = setting(360, help="longest document, in words")

    def validate(self) -> LengthSpec:
        if not 1 <= self.min_words <= self.median_words <= self.max_words:
            raise ValueError(
                f"need 1 <= min_words <= median_words <= max_words, got {self.min_words}, "
                f"{self.median_words}, {self.max_words}"
            )
        if self.sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {self.sigma}")
        return self


SHORT_DOCUMENTS = LengthSpec(median_words=8.0, sigma=0.4, min_words=3, max_words=24)


def skewed_pairs(
    n_pairs: int, per_query: int = 16, lengths: LengthSpec | None = None, seed: int = 0
) -> pa.Table:
    """`n_pairs` rows (`query_id`, `candidate_id`, `query_text`, `candidate_text`), `per_query` candidates
    per query, clustered by query as a retrieval stage writes them; deterministic for a seed."""
    if n_pairs < 1 or per_query < 1:
        raise ValueError(f"n_pairs and per_query must be >= 1, got {n_pairs} and {per_query}")
    spec = (lengths or LengthSpec()).validate()
    questions, words = questions_and_words()
    rng = np.random.default_rng(seed)
    sizes = rng.lognormal(np.log(spec.median_words), spec.sigma, size=n_pairs)
    sizes = np.clip(np.rint(sizes), spec.min_words, spec.max_words).astype(int)
    starts = rng.integers(0, len(words) - spec.max_words, size=n_pairs)
    query_order = rng.permutation(len(questions))
    rows: dict[str, list] = {c.QUERY_ID: [], c.CANDIDATE_ID: [], "query_text": [], "candidate_text": []}
    for i in range(n_pairs):
        q = i // per_query
        rows[c.QUERY_ID].append(f"q{q:05d}")
        rows[c.CANDIDATE_ID].append(f"d{i:06d}")
        rows["query_text"].append(questions[query_order[q % len(questions)]])
        rows["candidate_text"].append(" ".join(words[starts[i] : starts[i] + sizes[i]]))
    return pa.table(rows)


def text_pairs(table: pa.Table) -> list[tuple[str, str]]:
    """(query_text, candidate_text) per row, as CrossEncoder.predict takes them."""
    return list(
        zip(table.column("query_text").to_pylist(), table.column("candidate_text").to_pylist(), strict=True)
    )


def fit_documents_to_tokens(table: pa.Table, model, pair_tokens: int) -> pa.Table:
    """Trim each document so that its pair is `pair_tokens` tokens after the model's own preprocessing
    (chat template and prompt included; within a token or two, as BPE re-merges at the cut)."""
    tokenizer = model.tokenizer
    queries = table.column("query_text").to_pylist()
    docs = table.column("candidate_text").to_pylist()
    overhead = {q: int(model.preprocess([(q, "")])["attention_mask"].sum()) for q in set(queries)}
    fitted = []
    for query, doc in zip(queries, docs, strict=True):
        budget = pair_tokens - overhead[query]
        if budget < 1:
            raise ValueError(
                f"pair_tokens={pair_tokens} leaves no room for a document ({overhead[query]} tokens without one)"
            )
        text = doc
        ids = tokenizer.encode(text, add_special_tokens=False)
        while len(ids) < budget:
            text = f"{text} {doc}"
            ids = tokenizer.encode(text, add_special_tokens=False)
        fitted.append(tokenizer.decode(ids[:budget]))
    return table.set_column(
        table.schema.get_field_index("candidate_text"), "candidate_text", pa.array(fitted)
    )
