"""Each pair's model features, computed once: by `Featurizer` (the model's own `preprocess`), carried in Arrow
columns between stages, and collated into padded micro-batches by `Collator` right before the forward.

A row's features are its real tokens (`__input_ids`, no padding) and whatever else the processor made for
it (`__features`: pixel values, grid sizes, audio features, token-type ids; pickled, null for plain text).
Collating re-pads to the micro-batch's longest row on the model's own padding side with its own pad id,
and concatenates the rest along the batch axis, which is how the processor itself batches them: the
tensors a forward sees are those `CrossEncoder.predict` builds for the same rows.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from actors.reranker.truncation import TruncateMode, document_first, token_limit, untruncated
from actors.rows import failure_reason
from schemas import columns as c

TEXT_CHUNK_ROWS = 256  # text pairs preprocessed per call (the tokenizer batches them in Rust)
# Per-call processor settings for text chunks: no padding, plain lists (see `Featurizer._text_rows`).
UNPADDED = {"common": {"return_tensors": None}, "text": {"padding": False}}


@dataclass
class RowFeatures:
    """One pair's features, unpadded. `seq`: per-token arrays beside the ids (padded like them);
    `rows`: tensors whose first axis is this row's share of the batch (concatenated); `const`: values the
    processor gives once per batch (modality, logits_to_keep), which rows batched together must share."""

    ids: np.ndarray
    seq: dict = field(default_factory=dict)
    rows: dict = field(default_factory=dict)
    const: dict = field(default_factory=dict)
    truncated: bool = False  # the pair lost tokens to the max length (see actors.reranker.truncation)

    @property
    def tokens(self) -> int:
        return len(self.ids)

    def signature(self) -> tuple:
        """Rows batch together only when their features have the same shape of dict."""
        return (tuple(sorted(self.seq)), tuple(sorted(self.rows)), tuple(sorted(self.const.items())))

    def extras(self) -> bytes | None:
        """Everything but the ids, for the `__features` column (None for plain text)."""
        if not self.seq and not self.rows and not self.const:
            return None
        return pickle.dumps((self.seq, self.rows, self.const), protocol=5)


def to_columns(features: list[RowFeatures | None]) -> dict[str, pa.Array]:
    """`__input_ids`, `__features`, `__tokens`, `__truncated` for a block (None: a row without features)."""
    ids = [None if f is None else f.ids for f in features]
    return {
        c.ROW_INPUT_IDS: pa.array(ids, pa.list_(pa.int32())),
        c.ROW_FEATURES: pa.array([None if f is None else f.extras() for f in features], pa.binary()),
        c.ROW_TOKENS: pa.array([0 if f is None else f.tokens for f in features], pa.int64()),
        c.ROW_TRUNCATED: pa.array([f is not None and f.truncated for f in features], pa.bool_()),
    }


def from_table(table: pa.Table, rows: np.ndarray) -> list[RowFeatures]:
    """The features of `rows` of a block that carries `__input_ids` / `__features`."""
    ids = table.column(c.ROW_INPUT_IDS).combine_chunks()
    offsets = ids.offsets.to_numpy()
    values = ids.values.to_numpy(zero_copy_only=False)
    extras = table.column(c.ROW_FEATURES).to_pylist()
    out = []
    for i in rows:
        row = RowFeatures(values[offsets[i] : offsets[i + 1]])
        if extras[i] is not None:
            row.seq, row.rows, row.const = pickle.loads(extras[i])
        out.append(row)
    return out


def _numpy(value):
    """Tensors travel as numpy where numpy has the dtype (bfloat16 does not: kept as a tensor)."""
    try:
        return value.numpy()
    except TypeError:
        return value


def split_rows(output: dict) -> list[RowFeatures] | None:
    """A batched `preprocess` output as one `RowFeatures` a row, or None when it holds a tensor that is not
    laid out per token (e.g. image patches of several rows concatenated): such batches go row by row."""
    import torch

    ids, mask = output["input_ids"], output.get("attention_mask")
    if mask is None:
        mask = torch.ones_like(ids)
    batch, width = ids.shape
    seq, const = {}, {}
    for key, value in output.items():
        if key in ("input_ids", "attention_mask"):
            continue
        if isinstance(value, torch.Tensor):
            if value.dim() < 2 or tuple(value.shape[:2]) != (batch, width):
                if batch > 1:
                    return None
                continue  # one row: handled below as a whole
            seq[key] = value
        else:
            const[key] = value
    keep = mask.bool()
    rows = []
    for i in range(batch):
        row = RowFeatures(ids[i][keep[i]].numpy().astype(np.int32), const=dict(const))
        row.seq = {key: _numpy(value[i][keep[i]]) for key, value in seq.items()}
        if batch == 1:
            row.rows = {
                key: _numpy(value)
                for key, value in output.items()
                if isinstance(value, torch.Tensor)
                and key not in seq
                and key not in ("input_ids", "attention_mask")
            }
        rows.append(row)
    return rows


class Featurizer:
    """A model's `preprocess`, a pair at a time in effect: text pairs in chunks (tokenised together, then
    split per row), pairs with media one by one (their processor outputs are not per-token).

    `prompt` is the run's prompt; a pair's own instruction (`__call__`'s `prompts`) replaces it for that
    pair, exactly as `predict(..., prompt=instruction)` would. `truncate` (see
    `actors.reranker.truncation`): "model" cuts as `predict` does, "document" cuts the document first.
    Either way each row records whether it lost tokens to the max length."""

    def __init__(self, model, prompt: str | None, truncate: TruncateMode = "model"):
        self.model, self.prompt, self.truncate = model, prompt, truncate
        # With flash-attention the library would return one flattened, unpadded sequence per batch; rows
        # here are kept apart and re-padded per length-sorted micro-batch instead (padding ~0.96).
        first = model[0] if hasattr(model, "__getitem__") else None
        if hasattr(first, "_should_flatten_inputs"):
            first._should_flatten_inputs = lambda *args, **kwargs: False

    def with_truncation(self, truncate: TruncateMode) -> Featurizer:
        self.truncate = truncate
        return self

    def __call__(
        self, pairs: list, prompts: list[str | None] | None = None
    ) -> tuple[list[RowFeatures | None], dict[int, str]]:
        """(features per pair, {index: reason} for the pairs that could not be preprocessed). `prompts`:
        each pair's own instruction, None where the run's prompt applies."""
        out: list[RowFeatures | None] = [None] * len(pairs)
        bad: dict[int, str] = {}
        effective = [self.prompt if p is None else p for p in (prompts or [None] * len(pairs))]
        by_prompt: dict[str | None, list[int]] = {}
        for k, prompt in enumerate(effective):
            by_prompt.setdefault(prompt, []).append(k)
        for prompt, members in by_prompt.items():
            self._featurize(pairs, members, prompt, out, bad)
        mark_truncated(self.model, pairs, effective, out, self.truncate)
        return out, bad

    def _featurize(self, pairs, members: list[int], prompt, out, bad) -> None:
        """The features of `pairs[members]`, which share `prompt`."""
        text = [k for k in members if all(isinstance(x, str) for x in pairs[k])]
        text_set = set(text)
        for start in range(0, len(text), TEXT_CHUNK_ROWS):
            chunk = text[start : start + TEXT_CHUNK_ROWS]
            try:
                rows = self._text_rows([pairs[k] for k in chunk], prompt)
            except Exception:
                rows = None  # one bad pair must not fail its chunk: go row by row
            if rows is None:
                for k in chunk:
                    self._one(pairs, k, out, bad, prompt)
            else:
                for k, row in zip(chunk, rows, strict=True):
                    out[k] = row
        for k in members:
            if k not in text_set:
                self._one(pairs, k, out, bad, prompt)

    def _text_rows(self, pairs: list, prompt: str | None) -> list[RowFeatures] | None:
        """Text pairs through the model's own `preprocess`, asked (per call) for unpadded lists instead of
        padded tensors: the same tokens, without padding rows only to strip it again, and without
        transformers' list-to-tensor conversion, which costs more than tokenising itself."""
        output = self.model.preprocess(pairs, prompt=prompt, processing_kwargs=UNPADDED)
        return unpadded_rows(output)

    def _one(self, pairs, k, out, bad, prompt) -> None:
        try:
            out[k] = split_rows(self.model.preprocess([pairs[k]], prompt=prompt))[0]
        except Exception as exc:  # one bad pair becomes one error row
            bad[k] = failure_reason("preprocessing failed", exc)


def unpadded_rows(output: dict) -> list[RowFeatures] | None:
    """One `RowFeatures` a row of a `preprocess` output asked for unpadded lists (`UNPADDED`); None when
    a value cannot be split per row."""
    ids = output.get("input_ids")
    if ids is None or hasattr(ids, "shape"):  # a processor that ignored the request: tensors, padded
        return split_rows(output)
    const, seq = {}, {}
    for key, value in output.items():
        if key in ("input_ids", "attention_mask"):
            continue
        if isinstance(value, list) and len(value) == len(ids):
            seq[key] = value
        elif isinstance(value, list):
            return None
        else:
            const[key] = value
    rows = []
    for i, row_ids in enumerate(ids):
        row = RowFeatures(np.asarray(row_ids, dtype=np.int32), const=const)
        row.seq = {key: np.asarray(value[i]) for key, value in seq.items()}
        rows.append(row)
    return rows


def mark_truncated(model, pairs: list, prompts: list, out: list, mode: TruncateMode = "model") -> None:
    """Flag each row of `out` (the features of `pairs`, each with its own prompt) that lost tokens to the
    model's max length; with `mode` "document", re-cut such text rows so that only the document gives
    way (`actors.reranker.truncation`)."""
    limit = token_limit(model)
    if limit is None:
        return
    at_limit = [k for k, f in enumerate(out) if f is not None and f.tokens >= limit]
    by_prompt: dict = {}
    for k in at_limit:
        if all(isinstance(x, str) for x in pairs[k]):
            by_prompt.setdefault(prompts[k], []).append(k)
        else:
            out[k].truncated = True
    for prompt, rows in by_prompt.items():
        try:
            full = unpadded_rows(untruncated(model, [pairs[k] for k in rows], prompt))
        except Exception:
            full = None
        if full is None:  # a processor that cannot say: at the limit counts as cut
            for k in rows:
                out[k].truncated = True
            continue
        cut = []
        for k, row in zip(rows, full, strict=True):
            out[k].truncated = row.tokens > limit
            if out[k].truncated:
                cut.append((k, row))
        if mode == "document" and cut:
            _cut_documents(model, pairs, prompt, cut, out, limit)


def _cut_documents(model, pairs, prompt, cut: list, out: list, limit: int) -> None:
    try:
        empty = unpadded_rows(untruncated(model, [[pairs[k][0], ""] for k, _ in cut], prompt))
    except Exception:  # the pair without its document cannot be rendered: the model's own cut stays
        return
    for (k, row), bare in zip(cut, empty or [None] * len(cut), strict=True):
        keep = None if bare is None else document_first(row.ids, bare.ids, limit)
        if keep is not None:  # else the query alone is over the limit: the model's own cut stays
            seq = {key: np.asarray(value)[keep] for key, value in row.seq.items()}
            out[k] = RowFeatures(row.ids[keep], seq, const=out[k].const, truncated=True)


@dataclass(frozen=True)
class Collator:
    """Pads rows to a micro-batch as the model's processor pads: `side` ("left"/"right"), `pad_id` for the
    ids, 0 for the mask and other per-token arrays; `id_dtype`, `mask_dtype` as the processor returns."""

    side: str
    pad_id: int
    id_dtype: object = None
    mask_dtype: object = None

    @classmethod
    def probe(cls, model, prompt: str | None) -> Collator:
        """Learn the padding from the model's own preprocessing of two text pairs of unequal length."""
        out = model.preprocess([("q", "d"), ("q", "d " * 12)], prompt=prompt)
        ids, mask = out["input_ids"], out["attention_mask"]
        short = mask[0].bool()
        side = "left" if not short[0] else "right"
        pad = ids[0][~short]
        return cls(side, int(pad[0]) if len(pad) else 0, ids.dtype, mask.dtype)

    def __call__(self, rows: list[RowFeatures]) -> dict:
        import torch

        width = max(r.tokens for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=self.id_dtype or torch.long)
        mask = torch.zeros((len(rows), width), dtype=self.mask_dtype or torch.long)
        for i, r in enumerate(rows):
            span = slice(width - r.tokens, width) if self.side == "left" else slice(0, r.tokens)
            ids[i, span] = torch.from_numpy(np.asarray(r.ids, dtype=np.int64))
            mask[i, span] = 1
        features = {"input_ids": ids, "attention_mask": mask}
        first = rows[0]
        for key in first.seq:
            values = [torch.as_tensor(r.seq[key]) for r in rows]
            padded = values[0].new_zeros((len(rows), width, *values[0].shape[1:]))
            for i, v in enumerate(values):
                span = slice(width - len(v), width) if self.side == "left" else slice(0, len(v))
                padded[i, span] = v
            features[key] = padded
        for key in first.rows:
            features[key] = torch.cat([torch.as_tensor(r.rows[key]) for r in rows], dim=0)
        features.update(first.const)
        return features
