"""Truncation you can see and choose: which pairs lost tokens to the max length, and which part gives way.

`CrossEncoder.predict` cuts a pair that is over the model's max length as its processor does: a chat
template's rendering is cut from its end (then sentence-transformers writes the template's closing turn
back over the last tokens); a plain text pair loses tokens from its longer side first (`longest_first`),
so a long query loses words too. That is the default here ("model"), and scores stay equal to `predict`.

"document" keeps the instruction, the query and the template's closing turn token for token, and cuts
only the document's tokens, from its end, as instruction rerankers expect. It finds the document's tokens
by rendering the pair twice, untruncated, with its document and with an empty one: what the two share at
the start (instruction and query) and at the end (the closing turn) is kept, the rest is the document.

A pair is counted truncated only when its untruncated rendering is longer than the limit: rows that come
out exactly at the limit are rendered once more without truncation to tell (rows below it cannot have
been cut). Pairs with media are counted as truncated when they reach the limit, and always cut as the
model cuts them (cutting media placeholder tokens would break them).
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np

TruncateMode = Literal["model", "document"]
TRUNCATE_MODES: tuple[str, ...] = get_args(TruncateMode)

# Per-call processor settings for the untruncated renderings: unpadded lists, no truncation (and so no
# restored closing turn either).
UNTRUNCATED = {"common": {"return_tensors": None}, "text": {"padding": False, "truncation": False}}
NO_LIMIT = 1 << 24  # tokenizers without a real limit report a huge model_max_length


def token_limit(model) -> int | None:
    """The max length the model's processor truncates to (None: effectively none)."""
    limit = getattr(model, "max_seq_length", None)
    if not isinstance(limit, int) or limit >= NO_LIMIT:
        return None
    return limit


def untruncated(model, pairs: list, prompt: str | None) -> dict:
    """`pairs` rendered and tokenised as `preprocess` does, but not truncated: a length probe, asked of the
    input module itself (the model's own `preprocess` runs once per pair, for its features)."""
    return model[0].preprocess(pairs, prompt=prompt, processing_kwargs=UNTRUNCATED)


def document_first(full: np.ndarray, empty: np.ndarray, limit: int) -> np.ndarray | None:
    """Positions of `full` (a pair's untruncated ids) to keep so that it fits `limit`, the document cut
    from its end: `empty` is the same pair rendered with an empty document. None when even the pair
    without its document is over the limit (the model's own truncation applies then)."""
    full, empty = np.asarray(full), np.asarray(empty)
    n = min(len(full), len(empty))
    head = int(np.argmin(np.append(full[:n] == empty[:n], False)))
    tail_room = len(empty) - head  # the tail never reaches back into the shared head
    same_tail = np.append(full[::-1][:tail_room] == empty[::-1][:tail_room], False)
    tail = int(np.argmin(same_tail))
    keep = limit - head - tail
    if keep < 0:
        return None
    return np.concatenate(
        [np.arange(head), np.arange(head, head + keep), np.arange(len(full) - tail, len(full))]
    )


TRUNCATED_WARN_SHARE = 0.05  # more of the scored pairs cut than this: the job says so, in one line


def truncation_warning(truncated: int, scored: int, spec) -> str | None:
    """The one line a run logs when more than `TRUNCATED_WARN_SHARE` of its scored pairs were cut."""
    if not scored or truncated / scored <= TRUNCATED_WARN_SHARE:
        return None
    limit = spec.max_length if spec.max_length is not None else "(the model's)"
    return (
        f"{truncated} of {scored} scored pairs ({truncated / scored:.1%}) were cut to the max length "
        f"(--max-length {limit}, --truncate {spec.truncate}); raise --max-length"
        + (", or pass --truncate document to keep queries whole" if spec.truncate == "model" else "")
    )
