"""Training pairs from judgements: positives from the qrels, negatives mined or drawn at random.

Pure functions (no Ray, no model): the mined rankings come in as lists of doc ids, best first. The rules
a reviewer checks here:

- a positive is a judged document with relevance > 0;
- a document judged relevant to a query (relevance > 0 in any judgements given) is never that query's
  negative; a document judged 0 is a fair (hard) negative;
- a document relevant to an evaluation query enters no training pair at all, so the evaluation measures
  what training never saw;
- each query gets `hard + random` negatives per positive; hard ones are drawn from the top `depth` of
  its mined ranking, and where too few remain there the rest are random, so the ratio (`pos_weight`)
  holds.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pyarrow as pa

from schemas.columns import RETRIEVAL_SCORE
from schemas.qrels import Qrels

QUERY, DOCUMENT, LABEL = "query", "document", "label"  # what the trainer reads, in this order
KIND = "kind"  # positive, hard or random: provenance, dropped before training
PAIR_SCHEMA = pa.schema(
    [
        pa.field("query_id", pa.string()),
        pa.field("doc_id", pa.string()),
        pa.field(QUERY, pa.string()),
        pa.field(DOCUMENT, pa.string()),
        pa.field(LABEL, pa.float32()),
        pa.field(KIND, pa.string()),
    ]
)
EVAL_SCHEMA = pa.schema(
    [
        pa.field("query_id", pa.string()),
        pa.field("doc_id", pa.string()),
        pa.field(QUERY, pa.string()),
        pa.field(DOCUMENT, pa.string()),
        pa.field(RETRIEVAL_SCORE, pa.float32()),  # the miner's similarity; null without mining
    ]
)
RANDOM_TRIES = 20  # draws per wanted random negative before falling back to a scan of the corpus


def relevant(qrels: Qrels) -> dict[str, set[str]]:
    """query id -> its documents judged relevant (relevance > 0)."""
    return {q: {d for d, rel in docs.items() if rel > 0} for q, docs in qrels.items()}


def merged_relevant(*judgements: Qrels) -> dict[str, set[str]]:
    """query id -> documents judged relevant to it in any of `judgements`."""
    out: dict[str, set[str]] = {}
    for qrels in judgements:
        for q, docs in relevant(qrels).items():
            out.setdefault(q, set()).update(docs)
    return out


@dataclass(frozen=True)
class Sampling:
    hard: int  # per positive
    random: int  # per positive
    depth: int  # hard negatives come from the top `depth` of the mined ranking


def sample_negatives(
    wanted_hard: int,
    wanted_random: int,
    mined: Sequence[str],
    doc_ids: Sequence[str],
    forbidden: set[str],
    rng: random.Random,
) -> tuple[list[str], list[str]]:
    """(hard, random) negatives of one query, distinct, none in `forbidden`. Hard ones are sampled from
    `mined` (already cut to the depth); the hard ones it cannot supply are added to the random ones."""
    pool = [d for d in dict.fromkeys(mined) if d not in forbidden]
    hard = rng.sample(pool, min(wanted_hard, len(pool)))
    taken = forbidden | set(hard)
    want = wanted_random + wanted_hard - len(hard)
    chosen: list[str] = []
    tries = 0
    while len(chosen) < want and tries < want * RANDOM_TRIES:
        d = doc_ids[rng.randrange(len(doc_ids))] if doc_ids else None
        tries += 1
        if d is not None and d not in taken:
            chosen.append(d)
            taken.add(d)
    if len(chosen) < want:  # a small corpus, or most of it forbidden: draw from what is left
        rest = [d for d in doc_ids if d not in taken]
        chosen += rng.sample(rest, min(want - len(chosen), len(rest)))
    return hard, chosen


def training_pairs(
    queries: Mapping[str, str],
    docs: Mapping[str, str],
    qrels: Qrels,
    never: Mapping[str, set[str]],
    held_out: set[str],
    mined: Mapping[str, Sequence[str]] | None,
    sampling: Sampling,
    seed: int,
) -> pa.Table:
    """One row per (query, document) pair with label 1.0 (positive) or 0.0 (negative), `kind` saying
    which. `never`: per query, documents that may not be its negatives (judged relevant anywhere);
    `held_out`: documents relevant to evaluation queries, in no pair at all."""
    rng = random.Random(seed)
    doc_ids = sorted(d for d in docs if d not in held_out)
    rows: dict[str, list] = {name: [] for name in PAIR_SCHEMA.names}

    def add(q: str, d: str, label: float, kind: str) -> None:
        for name, value in zip(PAIR_SCHEMA.names, (q, d, queries[q], docs[d], label, kind), strict=True):
            rows[name].append(value)

    for q in sorted(qrels):
        if q not in queries:
            continue
        pos = sorted(d for d, rel in qrels[q].items() if rel > 0 and d in docs and d not in held_out)
        if not pos:
            continue
        forbidden = never.get(q, set()) | held_out | set(pos)
        ranked = list((mined or {}).get(q, ()))[: sampling.depth]
        hard, rand = sample_negatives(
            sampling.hard * len(pos), sampling.random * len(pos), ranked, doc_ids, forbidden, rng
        )
        for d in pos:
            add(q, d, 1.0, "positive")
        for kind, negs in (("hard", hard), ("random", rand)):
            for d in negs:
                add(q, d, 0.0, kind)
    return pa.table(rows, schema=PAIR_SCHEMA)


def listwise(pairs: pa.Table) -> dict[str, list]:
    """The pairs as one list per query, positives first: {query, document: [docs], label: [labels]}, the
    input of LambdaLoss and ListNetLoss."""
    out: dict[str, dict] = {}
    for q, text, doc, label in zip(
        *(pairs.column(n).to_pylist() for n in ("query_id", QUERY, DOCUMENT, LABEL)), strict=True
    ):
        entry = out.setdefault(q, {QUERY: text, DOCUMENT: [], LABEL: []})
        entry[DOCUMENT].append(doc)
        entry[LABEL].append(label)
    return {name: [e[name] for e in out.values()] for name in (QUERY, DOCUMENT, LABEL)}


def eval_candidates(
    queries: Mapping[str, str],
    docs: Mapping[str, str],
    qrels: Qrels,
    mined: Mapping[str, Sequence[str]] | None,
    n: int,
    seed: int,
    similarity: Mapping[str, Sequence[float]] | None = None,
) -> pa.Table:
    """The documents each evaluation query's reranking is scored on: its mined top `n` as retrieved (a
    relevant document retrieval missed stays missed), or without mining its judged documents plus random
    ones up to `n` (an easier, optimistic list: good for picking a checkpoint, not for reporting).
    `similarity`: the mined documents' retrieval scores, in `mined`'s order (the `retrieval_score` column;
    null without)."""
    rng = random.Random(seed + 1)
    doc_ids = sorted(docs)
    rows: dict[str, list] = {name: [] for name in EVAL_SCHEMA.names}
    for q in sorted(qrels):
        if q not in queries:
            continue
        if mined is not None:
            found = (similarity or {}).get(q, ())
            chosen = [
                (d, found[i] if i < len(found) else None)
                for i, d in enumerate(mined.get(q, ())[:n])
                if d in docs
            ]
        else:
            judged = sorted(d for d in qrels[q] if d in docs)[:n]
            _, extra = sample_negatives(0, n - len(judged), (), doc_ids, set(judged), rng)
            chosen = [(d, None) for d in judged + extra]
        for d, score in chosen:
            for name, value in zip(EVAL_SCHEMA.names, (q, d, queries[q], docs[d], score), strict=True):
                rows[name].append(value)
    return pa.table(rows, schema=EVAL_SCHEMA)
