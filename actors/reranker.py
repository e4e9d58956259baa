"""The reranker actor: a frozen spec checked on the driver, and a worker that holds a CrossEncoder.

The worker measures each pair's real token length with the model's own preprocessing (chat template,
prompt, truncation, and the tokens media items expand to), sorts, packs micro-batches under a token budget,
and scores them with the library's `preprocess` + forward + activation, exactly as `CrossEncoder.predict`
does per batch. Scores are written back to the row they came from, whatever order batches finish in.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from actors.fast_paths import SCORE_PATHS, PrefixReuse, ScorePath, apply_fast_paths, finish_scores
from actors.media_loader import PAYLOAD_COLUMNS
from actors.model_source import materialize
from actors.model_spec import ModelSpec, resolve_device_and_dtype
from actors.pair_inputs import build_pairs
from actors.rows import RowErrors, column_or_nulls, isolate_failures, replace_columns
from actors.token_budget import MicroBatch, pack_by_groups, pack_by_tokens
from schemas import columns as c
from schemas.settings import one_of, setting

LENGTH_PROBE_ROWS = 256
BASELINE_BATCH_ROWS = 32  # CrossEncoder.predict's default batch size, for the padding baseline
# A row joins a micro-batch only if it is >= 90% as long as the batch's longest: on skewed lengths this
# keeps padding efficiency near 0.95 at the default budget (README, "Throughput": 0.96 on skewed pairs).
PACK_MIN_FILL = 0.9


@dataclass(frozen=True, kw_only=True)
class RerankerSpec(ModelSpec):
    """What a scoring actor needs to build its CrossEncoder. Small, picklable, validated on the driver."""

    model: str = setting(
        help="a sentence-transformers CrossEncoder directory, a plain causal-LM directory (scored as "
        "Transformer + LogitScore on 'yes'/'no'), a multimodal LM directory, a hub id, or an s3:// prefix"
    )
    prompt: str | None = setting(
        None, help="instruction passed as the prompt (default: the model's default prompt)"
    )
    score_path: ScorePath = setting(
        "logit",
        help="exact speed-up. logit: Transformer(text-generation) + LogitScore, as saved; hidden: the same "
        "weights as Transformer(feature-extraction) + Pooling(lasttoken) + Dense(lm_head[true] - "
        "lm_head[false]), which skips the LM head and, with flash_attention_2 on GPU, runs unpadded",
    )
    fp32_head: bool = setting(
        False,
        help="exact speed-up: compute the score head in fp32 under bf16/fp16 weights, so low precision "
        "does not round nearby scores into ties",
    )
    prefix_reuse: bool = setting(
        False,
        help="exact speed-up: run a query's shared instruction+query tokens once and its documents against "
        "their cached keys/values (causal text rerankers; pays on short documents)",
    )
    attn_implementation: str | None = setting(
        None,
        help="transformers attention kernel, e.g. sdpa, eager, flash_attention_2 (default: the library's)",
    )

    min_length = 8  # tokens: the chat template alone takes a few

    def validate(self) -> RerankerSpec:
        super().validate()
        one_of(self, "score_path", SCORE_PATHS)
        return self


def load_cross_encoder(spec: RerankerSpec):
    """Load the CrossEncoder. A saved sentence-transformers directory loads as saved; a plain causal LM gets
    the library's default Transformer(text-generation) + LogitScore("yes", "no"); a multimodal LM directory
    without modules.json (which the library would misload as sequence classification) is built as
    Transformer(any-to-any) + LogitScore("yes", "no")."""
    from sentence_transformers import CrossEncoder

    path = materialize(spec.model)
    device, dtype = resolve_device_and_dtype(spec)
    kwargs = dict(
        device=device,
        trust_remote_code=spec.trust_remote_code,
        revision=spec.revision,
        model_kwargs={"dtype": dtype},
    )
    if spec.attn_implementation is not None:
        kwargs["model_kwargs"]["attn_implementation"] = spec.attn_implementation
    if spec.max_length is not None:
        kwargs["max_length"] = spec.max_length
    if _is_multimodal_lm_without_modules(path):
        from sentence_transformers.cross_encoder.modules import LogitScore
        from sentence_transformers.sentence_transformer.modules import Transformer

        shared = {"trust_remote_code": spec.trust_remote_code, "revision": spec.revision}
        transformer = Transformer(
            path,
            transformer_task="any-to-any",
            model_kwargs={**shared, **kwargs["model_kwargs"]},
            processor_kwargs=shared,
            config_kwargs=shared,
            processing_kwargs={"chat_template": {"add_generation_prompt": True}},
            max_seq_length=spec.max_length,
        )
        tok = transformer.tokenizer
        yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
        if yes is None or no is None or tok.unk_token_id in (yes, no):
            raise ValueError(
                f"model {spec.model!r}: its tokenizer has no single 'yes'/'no' tokens, which the default "
                "LogitScore of a multimodal LM needs; save it as a CrossEncoder with its own LogitScore"
            )
        return CrossEncoder(modules=[transformer, LogitScore(yes, no)], num_labels=1, device=device)
    return CrossEncoder(path, **kwargs)


def non_finite_reason(value: float, model) -> str:
    """The error of a pair whose score came out NaN or infinite: named, with its usual causes."""
    dtype = getattr(model, "dtype", None)
    return (
        f"non-finite score {value} (model dtype {dtype}): an fp16 overflow or a broken checkpoint; "
        "try --dtype bfloat16 or float32"
    )


def _is_multimodal_lm_without_modules(path: str) -> bool:
    if not os.path.isdir(path) or os.path.exists(os.path.join(path, "modules.json")):
        return False
    config_path = os.path.join(path, "config.json")
    if not os.path.exists(config_path):
        return False
    with open(config_path) as f:
        archs = json.load(f).get("architectures") or [""]
    return archs[0].endswith("ForConditionalGeneration")


class RerankWorker:
    """Ray Data callable class: one CrossEncoder per actor, `__call__(pa.Table) -> pa.Table`."""

    def __init__(self, spec: RerankerSpec, torch_threads: int | None = None):
        import torch

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.spec = spec
        self.model = apply_fast_paths(load_cross_encoder(spec), spec.score_path, spec.fp32_head)
        self.model.eval()
        self.device = self.model.device
        self.prefix = PrefixReuse(self.model) if spec.prefix_reuse else None
        # As CrossEncoder.predict does: no explicit prompt means the model's default prompt, if it has one.
        self.prompt = spec.prompt
        if self.prompt is None and self.model.default_prompt_name is not None:
            self.prompt = self.model.prompts.get(self.model.default_prompt_name)

    # -- scoring primitives (overridable by tests: a double can reorder the batches it yields) ---------

    def token_lengths(self, pairs: list) -> np.ndarray:
        """Real tokens per pair after the model's own preprocessing, media tokens included."""
        lengths = np.zeros(len(pairs), dtype=np.int64)
        for start in range(0, len(pairs), LENGTH_PROBE_ROWS):
            chunk = pairs[start : start + LENGTH_PROBE_ROWS]
            features = self.model.preprocess(chunk, prompt=self.prompt)
            lengths[start : start + len(chunk)] = features["attention_mask"].sum(dim=1).cpu().numpy()
        return lengths

    def score_batch(self, pairs: list) -> np.ndarray:
        """One micro-batch through `preprocess` + forward + activation, as `CrossEncoder.predict` does
        (or, with prefix reuse, one query's candidates against its shared prefix computed once)."""
        import torch
        from sentence_transformers.util import batch_to_device

        if self.prefix is not None and self.prefix.applies(pairs):
            return self.prefix.score(pairs, prompt=self.prompt)
        with torch.inference_mode():
            features = self.model.preprocess(pairs, prompt=self.prompt)
            features = batch_to_device(features, self.device)
            return finish_scores(self.model, self.model(features)["scores"])

    def score_batches(
        self, pairs: list, batches: list[MicroBatch]
    ) -> Iterator[tuple[MicroBatch, np.ndarray]]:
        for batch in batches:
            yield batch, self.score_batch([pairs[i] for i in batch.rows])

    # -- the Ray Data entry point ----------------------------------------------------------------

    def __call__(self, table: pa.Table) -> pa.Table:
        n = table.num_rows
        errors = RowErrors(table, "score")
        scores = np.full(n, np.nan, dtype=np.float32)
        tokens = np.zeros(n, dtype=np.int64)
        padded = np.zeros(n, dtype=np.int64)
        unsorted_padded = np.zeros(n, dtype=np.int64)

        cached = column_or_nulls(table, c.ROW_CACHED_SCORE)
        for i, value in enumerate(cached):
            if value is not None and errors.ok(i):
                scores[i] = value
        todo = [i for i in range(n) if errors.ok(i) and cached[i] is None]
        pairs, build_errors = build_pairs(table, todo, self.model)
        for i, reason in build_errors.items():
            errors.fail(i, reason)
        rows = np.asarray([i for i in todo if i not in build_errors], dtype=np.int64)

        if len(pairs):
            lengths, bad = isolate_failures(self.token_lengths, pairs, "preprocessing failed", 0)
            for k, reason in bad.items():
                errors.fail(rows[k], reason)
            ok = np.asarray([k for k in range(len(pairs)) if k not in bad], dtype=np.int64)
            ok_pairs = [pairs[k] for k in ok]
            if self.prefix is not None:  # micro-batches never mix queries, so each shares one prefix
                queries = [p[0] if isinstance(p[0], str) else None for p in ok_pairs]
                batches = pack_by_groups(lengths[ok], queries, self.spec.batch_tokens, PACK_MIN_FILL)
            else:
                batches = pack_by_tokens(lengths[ok], self.spec.batch_tokens, min_fill=PACK_MIN_FILL)
            for start in range(0, len(ok), BASELINE_BATCH_ROWS):
                chunk = ok[start : start + BASELINE_BATCH_ROWS]
                unsorted_padded[rows[chunk]] = lengths[chunk].max()
            for batch, batch_scores, failed in self._score_isolating_failures(ok_pairs, batches):
                targets = rows[ok[batch.rows]]
                values = np.asarray(batch_scores, dtype=np.float32).reshape(len(targets))
                scores[targets] = values
                for k, reason in failed.items():
                    errors.fail(targets[k], reason)
                for k in np.flatnonzero(~np.isfinite(values)):
                    if k not in failed:
                        errors.fail(targets[k], non_finite_reason(values[k], self.model))
                tokens[targets] = lengths[ok[batch.rows]]
                padded[targets] = batch.padded_length

        # Decoded media stay here: the scored rows carry the references, not the pixels.
        out = table.drop_columns([name for name in table.column_names if name in PAYLOAD_COLUMNS])
        score_mask = ~np.asarray([errors.ok(i) for i in range(n)], dtype=bool) | np.isnan(scores)
        return replace_columns(
            out,
            {
                c.SCORE: pa.array(scores, pa.float32(), mask=score_mask),
                **errors.columns(),
                c.ROW_TOKENS: pa.array(tokens),
                c.ROW_PADDED: pa.array(padded),
                c.ROW_UNSORTED_PADDED: pa.array(unsorted_padded),
            },
        )

    def _score_isolating_failures(self, pairs: list, batches: list[MicroBatch]):
        """Yield (batch, scores, {index in batch: reason}) for every batch. If scoring raises, each batch not
        yet finished is scored again through `isolate_failures`: whole, and if that raises, pair by pair, so
        a single bad pair becomes one error row and the rest of its batch is still scored."""
        done: set[int] = set()
        try:
            for batch, values in self.score_batches(pairs, batches):
                done.add(id(batch))
                yield batch, values, {}
        except Exception:
            for batch in batches:
                if id(batch) not in done:
                    batch_pairs = [pairs[i] for i in batch.rows]
                    yield batch, *isolate_failures(self.score_batch, batch_pairs, "scoring failed", np.nan)
