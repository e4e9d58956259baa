"""Column names: the one place they are spelled out. Every other module imports them from here."""

from __future__ import annotations

# Pairs input / ranked output.
QUERY_ID = "query_id"
CANDIDATE_ID = "candidate_id"
SCORE = "score"
RANK = "rank"
FUSED_SCORE = "fused_score"  # with --fuse: the score `rank` orders by (pipelines.rerank.fuse)
RETRIEVAL_SCORE = "retrieval_score"
RETRIEVAL_RANK = "retrieval_rank"
INSTRUCTION = "instruction"  # optional, per pair: the prompt for that pair (null: the run's prompt)

# Errors table.
STAGE = "stage"
ERROR = "error"

# Corpus / queries / qrels.
DOC_ID = "doc_id"
RELEVANCE = "relevance"

# The BEIR layout's own names: corpus.jsonl and queries.jsonl rows, and the header of qrels/<split>.tsv.
BEIR_ID = "_id"
BEIR_TITLE = "title"
BEIR_TEXT = "text"
BEIR_QRELS_HEADER = ("query-id", "corpus-id", "score")

# Embedding tables and the score cache of the nightly refresh.
CONTENT_HASH = "content_hash"  # sha256 of a row's canonical content (see pipelines.refresh.content_hash)
EMBEDDING = "embedding"  # fixed_size_list<float32>[dim]
EMBEDDING_MODEL = "embedding_model"  # "<model id>@<revision>" that produced the embedding
EMBEDDED_RUN = "embedded_run"  # the run id that computed the embedding (older than this run when reused)
CACHE_KEY = "cache_key"  # sha256 of (query hash, doc hash, reranker id, revision, prompt)
SCORED_RUN = "scored_run"  # the run id that computed a cached score

MODALITIES = ("text", "image", "audio", "video")
MEDIA_MODALITIES = ("image", "audio", "video")


def content_columns(side: str) -> list[str]:
    """`query_text, query_image, ...` for side "query"; `candidate_*` for "candidate"; `doc_*` for "doc"."""
    return [f"{side}_{m}" for m in MODALITIES]


QUERY_CONTENT = content_columns("query")
CANDIDATE_CONTENT = content_columns("candidate")
DOC_CONTENT = content_columns("doc")
PASSTHROUGH = [RETRIEVAL_SCORE, RETRIEVAL_RANK]

# Internal helper columns carry this prefix and are dropped before anything is written for users.
INTERNAL = "__"
ROW_ERROR = "__error"  # null when the row is fine, else a readable reason
ROW_STAGE = "__stage"  # the stage that set ROW_ERROR
ROW_INPUT_ERROR = "__input_error"  # a joined first-stage row without a pair: its document or query is missing
ROW_TOKENS = "__tokens"  # real (unpadded) tokens of the scored pair
ROW_PADDED = "__padded_tokens"  # tokens the pair occupied in its padded micro-batch
ROW_TRUNCATED = "__truncated"  # the pair lost tokens to the max length (actors.reranker.features)
ROW_CACHED_SCORE = "__cached_score"  # a score known from an earlier run: the row is not scored again
ROW_UNSORTED_PADDED = "__unsorted_padded_tokens"  # same, had the rows gone in input order, 32 per batch
ROW_CACHE_KEY = "__cache_key"  # the pair's score-cache key (see pipelines.refresh.score_cache)
ROW_SIDE = "__side"  # which input of a co-partitioned join a row came from (see pipelines.refresh.join)
ROW_KEY = (
    "__row_key"  # a stable key of the input row: file index << 40 | row in file (pipelines.runs.checkpoint)
)

ROW_INPUT_IDS = "__input_ids"  # a pair's real token ids (list<int32>, unpadded): actors.reranker.features
ROW_FEATURES = (
    "__features"  # a pair's other processor outputs (pickled; null for text): actors.reranker.features
)
# The scoring actor's time on a block, on the block's first row (0 on the others): see actors.reranker.worker.
ROW_PREPROCESS_S = "__preprocess_s"  # the actor's own preprocessing of the block (--preprocess-tasks 0)
ROW_COLLATE_S = "__collate_s"
ROW_FORWARD_S = "__forward_s"
ROW_WRITE_S = "__write_back_s"
# manifest name -> column of each part of that time (block stats and `scoring_actor` read this one list)
ACTOR_TIME = {
    "preprocess_s": ROW_PREPROCESS_S,
    "collate_s": ROW_COLLATE_S,
    "forward_s": ROW_FORWARD_S,
    "write_back_s": ROW_WRITE_S,
}
ROW_FORWARD_START = "__forward_start"  # wall clock (s since the epoch) of the block's first forward
ROW_FORWARD_END = "__forward_end"  # ... and of the end of its last


def media_payload_column(content_column: str) -> str:
    """Internal column holding the decoded, in-memory form of a media reference column."""
    return f"{INTERNAL}{content_column}"
