"""The embedder actor: a frozen spec checked on the driver, and a worker that holds a SentenceTransformer.

The worker measures each input's real token length with the model's own `preprocess` (prompt and media
tokens included), sorts, packs micro-batches under a token budget, and embeds each micro-batch with
`encode_document` / `encode_query` (batch_size = the micro-batch), so prompts, task routing and
normalisation are exactly the library's. Embeddings are written back to the row they came from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa

from actors.elements import build_elements
from actors.model_source import check_loaded, materialize, source_fingerprint
from actors.model_spec import ModelSpec, resolve_device_and_dtype
from actors.rows import RowErrors, isolate_failures, replace_columns
from actors.token_budget import pack_by_tokens
from schemas import columns as c
from schemas.settings import SettingError, setting

Side = Literal["document", "query"]
SIDES: tuple[Side, ...] = ("document", "query")
PREFIX = {"document": "doc", "query": "query"}  # content-column prefix of each side
ROW_EMBED_SIDE = "__embed_side"  # per row, the side it belongs to, when one block holds both sides
DOCUMENT_PROMPT_NAMES = ("document", "passage", "corpus")  # what encode_document looks for, in order
LENGTH_PROBE_ROWS = 256


@dataclass(frozen=True, kw_only=True)
class EmbedderSpec(ModelSpec):
    """What an embedding actor needs to build its SentenceTransformer. Small, picklable, validated on the
    driver."""

    model: str = setting(help="SentenceTransformer: a saved directory, a hub id or an s3:// prefix")
    query_prompt_name: str | None = setting(
        None, help="prompt name for queries (default: the model's 'query' prompt, as encode_query)"
    )
    query_prompt: str | None = setting(None, help="literal prompt prepended to queries (instead of a name)")
    document_prompt_name: str | None = setting(
        None,
        help="prompt name for documents (default: 'document', 'passage' or 'corpus', as encode_document)",
    )
    document_prompt: str | None = setting(None, help="literal prompt prepended to documents")
    normalize: bool = setting(False, help="L2-normalise the embeddings")

    def validate(self) -> EmbedderSpec:
        super().validate()
        for side in ("query", "document"):
            if (
                getattr(self, f"{side}_prompt") is not None
                and getattr(self, f"{side}_prompt_name") is not None
            ):
                raise SettingError(
                    f"{side}_prompt", f"give either a {side} prompt or a {side} prompt name, not both"
                )
        return self

    def prompt_args(self, side: Side) -> dict[str, str | None]:
        """The `prompt_name` / `prompt` arguments of `encode_query` / `encode_document` for `side`."""
        return {
            "prompt_name": getattr(self, f"{side}_prompt_name"),
            "prompt": getattr(self, f"{side}_prompt"),
        }


def load_sentence_transformer(spec: EmbedderSpec):
    from sentence_transformers import SentenceTransformer

    device, dtype = resolve_device_and_dtype(spec)
    model = SentenceTransformer(
        materialize(spec.model),
        device=device,
        trust_remote_code=spec.trust_remote_code,
        revision=spec.revision,
        model_kwargs={"dtype": dtype},
    )
    if spec.max_length is not None:
        model.max_seq_length = spec.max_length
    return model


def resolved_prompt(model, side: Side, prompt_name: str | None, prompt: str | None) -> str | None:
    """The prompt string `encode_query` / `encode_document` will apply, for measuring token lengths."""
    if prompt is not None:
        return prompt
    if prompt_name is None:
        defaults = ("query",) if side == "query" else DOCUMENT_PROMPT_NAMES
        prompt_name = next((name for name in defaults if name in model.prompts), None)
    if prompt_name is not None:
        if prompt_name not in model.prompts:
            raise ValueError(
                f"prompt name {prompt_name!r} is not one of the model's prompts {sorted(model.prompts)}"
            )
        return model.prompts[prompt_name]
    return model.prompts.get(model.default_prompt_name) if model.default_prompt_name else None


class EmbedWorker:
    """Ray Data callable class: one SentenceTransformer per actor, `__call__(pa.Table) -> pa.Table`.

    Input rows carry the side's id and content columns (`doc_*` or `query_*`), media payload columns from
    the media stage, and optionally an `embedding` already known (reused from an earlier night): those rows
    and rows already marked `__error` are passed through untouched. Adds or fills `embedding`
    (fixed_size_list<float32>), `__error` / `__stage` and `__tokens`.

    With `side` None, a block may hold documents and queries together (the refresh embeds both with one
    pool and one model load): each row's `__embed_side` says which it is, and each side is embedded with
    its own call (`encode_document` / `encode_query`), prompt and content columns.
    """

    source: str | None = None  # the fingerprint of the model's bytes as loaded (None: nothing to compare)

    def __init__(self, spec: EmbedderSpec, side: Side | None = None, torch_threads: int | None = None):
        import torch

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.spec, self.side = spec, side
        self.active: Side | None = side  # the side being embedded (set per block part when side is None)
        self.source = source_fingerprint(spec.model)  # of the bytes about to be loaded; checked per block
        self.model = load_sentence_transformer(spec)
        self.model.eval()
        self.dim = self.model.get_embedding_dimension()
        self.patch = _patch_size(self.model)
        self._prompts: dict[Side, str | None] = {}
        if side is not None:
            self.prompt(side)  # a prompt name the model lacks fails at load, not on the first block

    def prompt(self, side: Side) -> str | None:
        """The prompt `encode_query` / `encode_document` apply for `side` (resolved once)."""
        if side not in self._prompts:
            self._prompts[side] = resolved_prompt(self.model, side, **self.spec.prompt_args(side))
        return self._prompts[side]

    def token_lengths(self, inputs: list) -> np.ndarray:
        """Real tokens per input of the active side after the model's own preprocessing (prompt, chat
        template and media tokens included). The inputs share one modality: the library preprocesses one
        modality per batch."""
        side = self.active
        lengths = np.zeros(len(inputs), dtype=np.int64)
        for start in range(0, len(inputs), LENGTH_PROBE_ROWS):
            chunk = inputs[start : start + LENGTH_PROBE_ROWS]
            features = self.model.preprocess(chunk, prompt=self.prompt(side), task=side)
            lengths[start : start + len(chunk)] = _feature_lengths(features, len(chunk), self.patch)
        return lengths

    def embed_batch(self, inputs: list) -> np.ndarray:
        side = self.active
        encode: Callable = self.model.encode_query if side == "query" else self.model.encode_document
        out = encode(
            inputs,
            batch_size=len(inputs),
            show_progress_bar=False,
            convert_to_numpy=True,
            normalize_embeddings=self.spec.normalize,
            **self.spec.prompt_args(side),
        )
        return np.asarray(out, dtype=np.float32).reshape(len(inputs), self.dim)

    def __call__(self, table: pa.Table, fingerprint: str | None = None) -> pa.Table:
        """`fingerprint`: the model's, as the driver took it when the run started; bytes loaded that differ
        (changed since, or another copy on this node) raise `ModelChanged` before any row is embedded."""
        check_loaded(self.spec.model, self.source, fingerprint)
        n = table.num_rows
        out = _Output(
            vectors=np.zeros((n, self.dim), dtype=np.float32),
            have=np.zeros(n, dtype=bool),
            tokens=np.zeros(n, dtype=np.int64),
            errors=RowErrors(table, "embed"),
        )
        for i, vector in _known_embeddings(table, self.dim).items():
            if out.errors.ok(i):
                out.vectors[i], out.have[i] = vector, True
        todo = [i for i in range(n) if out.errors.ok(i) and not out.have[i]]
        for side, rows in self._rows_by_side(table, todo).items():
            self._embed_side(table, side, rows, out)
        return out.to_table(table, self.dim)

    def _rows_by_side(self, table: pa.Table, rows: list[int]) -> dict[Side, list[int]]:
        if self.side is not None:
            return {self.side: rows}
        if ROW_EMBED_SIDE not in table.column_names:
            raise ValueError(f"an EmbedWorker built for both sides needs the {ROW_EMBED_SIDE!r} column")
        sides = table.column(ROW_EMBED_SIDE).to_pylist()
        unknown = {sides[i] for i in rows} - set(SIDES)
        if unknown:
            raise ValueError(f"{ROW_EMBED_SIDE} values {sorted(map(str, unknown))}; expected {list(SIDES)}")
        return {side: [i for i in rows if sides[i] == side] for side in SIDES}

    def _embed_side(self, table: pa.Table, side: Side, todo: list[int], out: _Output) -> None:
        if not todo:
            return
        self.active = side
        inputs, build_errors = build_elements(table, PREFIX[side], todo, self.model)
        for i, reason in build_errors.items():
            out.errors.fail(i, reason)
        rows = np.asarray([i for i in todo if i not in build_errors], dtype=np.int64)
        groups: dict = {}
        for k, item in enumerate(inputs):
            groups.setdefault(_modality_of(item), []).append(k)
        for members in groups.values():
            self._embed_group([inputs[k] for k in members], rows[members], out)

    def _embed_group(self, inputs: list, targets: np.ndarray, out: _Output) -> None:
        """Inputs of one side and modality: lengths, then length-sorted micro-batches under the token
        budget."""
        lengths, bad = isolate_failures(self.token_lengths, inputs, "preprocessing failed", 0)
        for k, reason in bad.items():
            out.errors.fail(targets[k], reason)
        ok = np.asarray([k for k in range(len(inputs)) if k not in bad], dtype=np.int64)
        for batch in pack_by_tokens(lengths[ok], self.spec.batch_tokens):
            picked = ok[batch.rows]
            self._embed_into([inputs[k] for k in picked], targets[picked], out)
            out.tokens[targets[picked]] = lengths[picked]

    def _embed_into(self, inputs: list, targets: np.ndarray, out: _Output) -> None:
        """Embed one micro-batch; if it raises, embed its rows one by one so one bad input is one error row."""
        zeros = np.zeros(self.dim, dtype=np.float32)
        vectors, bad = isolate_failures(self.embed_batch, inputs, "embedding failed", zeros)
        for k, target in enumerate(targets):
            if k in bad:
                out.errors.fail(target, bad[k])
            else:
                out.vectors[target], out.have[target] = vectors[k], True


@dataclass
class _Output:
    """Per-row results of one block, filled in whatever order micro-batches finish."""

    vectors: np.ndarray
    have: np.ndarray
    tokens: np.ndarray
    errors: RowErrors

    def to_table(self, table: pa.Table, dim: int) -> pa.Table:
        valid = self.have & np.asarray([self.errors.ok(i) for i in range(len(self.have))], dtype=bool)
        flat = pa.array(self.vectors.reshape(-1), pa.float32())
        embedding = pa.FixedSizeListArray.from_arrays(flat, dim, mask=pa.array(~valid))
        columns = {c.EMBEDDING: embedding, **self.errors.columns(), c.ROW_TOKENS: pa.array(self.tokens)}
        return replace_columns(table, columns)


def _modality_of(item) -> str | tuple[str, ...]:
    return "text" if isinstance(item, str) else tuple(sorted(item))


def _feature_lengths(features: dict, n: int, patch: int) -> np.ndarray:
    """Tokens per row: the attention mask when the model has one (text, and VLMs, whose prompt carries the
    visual tokens); else one token per patch of the preprocessed image (CLIP-style image towers)."""
    mask = features.get("attention_mask")
    if mask is not None:
        return mask.sum(dim=1).cpu().numpy()
    pixels = features.get("pixel_values")
    if pixels is not None and getattr(pixels, "ndim", 0) == 4:
        return np.full(n, max(1, (pixels.shape[-2] // patch) * (pixels.shape[-1] // patch)), dtype=np.int64)
    raise ValueError(
        f"cannot count tokens: preprocess returned no attention_mask or 4-D pixel_values ({sorted(features)})"
    )


def _patch_size(model) -> int:
    """The vision patch size of the first module's model, for counting image tokens (14 when unknown)."""
    config = getattr(getattr(model[0], "model", None), "config", None)
    vision = getattr(config, "vision_config", None)
    return int(getattr(vision, "patch_size", None) or getattr(config, "patch_size", None) or 14)


def _known_embeddings(table: pa.Table, dim: int) -> dict[int, np.ndarray]:
    """Rows that arrive with an embedding (reused from an earlier night), as {row: vector}."""
    if c.EMBEDDING not in table.column_names:
        return {}
    column = table.column(c.EMBEDDING).combine_chunks()
    if pa.types.is_null(column.type) or column.null_count == len(column):
        return {}
    if not pa.types.is_fixed_size_list(column.type) or column.type.list_size != dim:
        raise ValueError(f"reused embeddings have type {column.type}, expected fixed_size_list<float>[{dim}]")
    values = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    # flatten() skips null slots; walk the valid rows in order.
    valid = np.flatnonzero(column.is_valid().to_numpy(zero_copy_only=False))
    matrix = values.reshape(len(valid), dim)
    return {int(i): matrix[k] for k, i in enumerate(valid)}
