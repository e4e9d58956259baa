"""Hard-negative mining with the project's own retrieval: a SentenceTransformer embeds the corpus and the
queries (`encode_document` / `encode_query`, the model's own prompts, as `jobs.refresh` embeds), and the
exact top-k by cosine similarity is taken with the refresh's own top-k (ties by doc id). Each retrieved
document keeps its cosine similarity (float32, as the refresh's `retrieval_score`): the evaluation candidates
carry it, and the trained model's fusion weight is tuned on it (`pipelines.train.fusion`).

Runs in the driver process, on whatever device it has: meant for training sets whose corpus fits in one
process (thousands to a few hundred thousand documents). A bigger corpus should be retrieved by
`jobs.refresh` first; reading its candidates here is not implemented.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from actors.embedder import EmbedderSpec, load_sentence_transformer
from pipelines.refresh.retrieve import prepare_matrix, topk_positions

ENCODE_BATCH = 64
QUERY_CHUNK = 1024


def mine(
    docs: Mapping[str, str],
    queries: Mapping[str, str],
    query_ids: Sequence[str],
    spec: EmbedderSpec,
    depth: int,
) -> tuple[dict[str, list[str]], dict[str, list[float]]]:
    """(query id -> the ids of its `depth` most similar documents, best first; query id -> their cosine
    similarities, in the same order)."""
    model = load_sentence_transformer(spec)
    doc_ids = sorted(docs)
    d = model.encode_document(
        [docs[i] for i in doc_ids], batch_size=ENCODE_BATCH, convert_to_numpy=True, show_progress_bar=False
    )
    q = model.encode_query(
        [queries[i] for i in query_ids],
        batch_size=ENCODE_BATCH,
        convert_to_numpy=True,
        show_progress_bar=False,
    )
    dm, qm = prepare_matrix(np.asarray(d), "cosine"), prepare_matrix(np.asarray(q), "cosine")
    ranked: dict[str, list[str]] = {}
    similarity: dict[str, list[float]] = {}
    for start in range(0, len(query_ids), QUERY_CHUNK):
        scores = (qm[start : start + QUERY_CHUNK] @ dm.T).astype(np.float32)
        for row, positions in enumerate(topk_positions(scores, min(depth, len(doc_ids)))):
            ranked[query_ids[start + row]] = [doc_ids[p] for p in positions]
            similarity[query_ids[start + row]] = scores[row, positions].tolist()
    return ranked, similarity
