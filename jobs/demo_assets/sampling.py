"""The demo's judgements and candidate lists: qrels from the pydoc topics, and per query its relevant
paragraphs plus the best BM25 paragraphs of other topics, as a first-stage retriever would hand them over."""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Callable

from jobs.demo_assets.pydoc_corpus import DEMO_TOPICS, query_id

CANDIDATES_PER_QUERY = 16
MAX_RELEVANT_PER_QUERY = 6
SEED = 13

# fmt: off
_STOPWORDS = frozenset((
    "a", "an", "and", "are", "as", "at", "be", "by", "do", "does", "for", "from", "how", "in", "is", "it",
    "of", "on", "or", "python", "that", "the", "this", "to", "what", "when", "which", "work",
))
# fmt: on


def qrels(docs: dict[str, str], doc_topics: dict[str, set[str]]) -> dict[str, dict[str, int]]:
    """Relevance 2 for the first paragraph of a demo topic (its definition), 1 for its other paragraphs."""
    judged: dict[str, dict[str, int]] = {}
    for topic in DEMO_TOPICS:
        relevant = [d for d in docs if topic in doc_topics[d]]
        if not relevant:
            raise ValueError(f"demo topic {topic!r} has no paragraphs in this Python's pydoc_data.topics")
        own = [d for d in relevant if d.startswith(f"{topic}#")] or relevant
        judged[query_id(topic)] = {d: 2 if d == own[0] else 1 for d in relevant}
    return judged


def qrels_table(judged: dict[str, dict[str, int]]):
    """The qrels as a Parquet-ready table: query_id, doc_id, relevance (int32)."""
    import pyarrow as pa

    from schemas import columns as c

    rows = [(q, d, r) for q, docs in judged.items() for d, r in docs.items()]
    return pa.table(
        {
            c.QUERY_ID: [r[0] for r in rows],
            c.DOC_ID: [r[1] for r in rows],
            c.RELEVANCE: pa.array([r[2] for r in rows], pa.int32()),
        }
    )


def pairs(docs: dict[str, str], queries: dict[str, str], judged: dict[str, dict[str, int]]):
    """Per query: its relevant paragraphs plus the best-scoring BM25 paragraphs of other topics, ranked by
    BM25 (retrieval_score / retrieval_rank), then shuffled within the query so row order tells nothing."""
    import pyarrow as pa

    from schemas import columns as c
    from schemas.tables import PAIRS_SCHEMA

    score = bm25(docs)
    rng = random.Random(SEED)
    rows = []
    for qid, text in queries.items():
        gains = judged[qid]
        relevant = sorted(gains, key=lambda d: (-gains[d], d))[:MAX_RELEVANT_PER_QUERY]
        negatives = sorted((d for d in docs if d not in gains), key=lambda d: (-score(text, d), d))
        chosen = relevant + negatives[: CANDIDATES_PER_QUERY - len(relevant)]
        ranked = sorted(chosen, key=lambda d: (-score(text, d), d))
        group = [(qid, d, text, docs[d], score(text, d), ranked.index(d) + 1) for d in chosen]
        rng.shuffle(group)
        rows.extend(group)
    names = [c.QUERY_ID, c.CANDIDATE_ID, "query_text", "candidate_text", c.RETRIEVAL_SCORE, c.RETRIEVAL_RANK]
    schema = pa.schema([PAIRS_SCHEMA.field(n) for n in names])
    return pa.table({n: [r[i] for r in rows] for i, n in enumerate(names)}, schema=schema)


def bm25(docs: dict[str, str]) -> Callable[[str, str], float]:
    """A plain BM25 (k1=1.2, b=0.75) over the corpus: the demo's stand-in for a first-stage retriever."""
    tfs = {d: Counter(_terms(text)) for d, text in docs.items()}
    lengths = {d: sum(tf.values()) for d, tf in tfs.items()}
    avg = sum(lengths.values()) / len(lengths)
    df = Counter(t for tf in tfs.values() for t in tf)
    idf = {t: math.log(1 + (len(docs) - n + 0.5) / (n + 0.5)) for t, n in df.items()}

    def score(query: str, doc_id: str) -> float:
        tf, norm = tfs[doc_id], 1.2 * (0.25 + 0.75 * lengths[doc_id] / avg)
        return sum(idf[t] * tf[t] * 2.2 / (tf[t] + norm) for t in set(_terms(query)) if t in tf)

    return score


def _terms(text: str) -> list[str]:
    return [t for t in re.findall(r"[a-z_][a-z0-9_]+", text.lower()) if t not in _STOPWORDS]
