"""Exact speed-ups of the scoring path, each behind a `RerankerSpec` flag and each held to score parity with
`CrossEncoder.predict` (tests/integration/test_fast_paths.py; `python -m jobs.benchmark` re-checks them on
the real model).

- `to_hidden_state_chain`: Transformer(text-generation) + LogitScore becomes Transformer(feature-extraction)
  + Pooling(lasttoken) + Dense(w = lm_head[true] - lm_head[false]) over the *same* weights, in memory. It
  skips the LM head (`CrossEncoder.predict` with flash-attention runs its text unpadded; the pipeline keeps
  rows padded per length-sorted micro-batch, see `actors.reranker.features`).
- `set_fp32_head`: the score head (the LM head, or the Dense) computes in fp32 under bf16/fp16 weights
  (sentence-transformers' `keep_in_fp32_modules`), so low precision does not quantise scores into ties.
- `PrefixReuse`: the instruction + query tokens that open every pair of one query run once; the candidates'
  suffixes run against that prefix's key/value cache. Exact for causal attention: same tokens, same
  relative positions (RoPE), same masks; only the floating-point summation order differs (~1e-6 in fp32).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from typing import Literal

import numpy as np

ScorePath = Literal["logit", "hidden"]
SCORE_PATHS: tuple[str, ...] = ("logit", "hidden")
_CAUSAL_BASE = "_rerank_causal_base"  # marks a feature-extraction Transformer built here from a causal LM


def finish_scores(model, scores) -> np.ndarray:
    """The post-processing `CrossEncoder.predict` applies to a batch of raw scores: upcast sub-fp32 scores
    to fp32, then the model's activation, then squeeze a single label. Returns fp32 numpy."""
    import torch

    if torch.is_floating_point(scores) and torch.finfo(scores.dtype).bits < 32:
        scores = scores.float()
    if model.activation_fn is not None:
        scores = model.activation_fn(scores)
    if scores.ndim > 1:
        scores = scores.squeeze(-1)
    return scores.float().cpu().numpy()


def _logit_chain_parts(cross_encoder):
    """(Transformer, LogitScore) of a Transformer(text-generation) + LogitScore CrossEncoder, else raise."""
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.cross_encoder.modules import LogitScore

    modules = list(cross_encoder)
    if (
        len(modules) != 2
        or not isinstance(modules[0], Transformer)
        or not isinstance(modules[1], LogitScore)
        or modules[0].transformer_task != "text-generation"
    ):
        chain = " + ".join(type(m).__name__ for m in modules)
        raise ValueError(
            f"this fast path needs a Transformer(text-generation) + LogitScore reranker, got {chain}; "
            "use score_path='logit' and prefix_reuse=False for this model"
        )
    return modules[0], modules[1]


def _check_linear_head(config) -> None:
    """The Dense replaces logit(true) - logit(false); that holds only if logits are a plain linear map."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name, neutral in (("final_logit_softcapping", None), ("logit_scale", 1.0)):
        value = getattr(text, name, neutral)
        if value is not None and value != neutral:
            raise ValueError(
                f"{text.model_type} applies {name}={value} to its logits, so a linear score head is not "
                "exact; use score_path='logit' for this model"
            )


def to_hidden_state_chain(cross_encoder, fp32_head: bool = False):
    """Build Transformer(feature-extraction) + Pooling(lasttoken) + Dense from a Transformer(text-generation)
    + LogitScore CrossEncoder, sharing its base model weights (nothing is loaded or copied).

    The Dense weight is `lm_head[true] - lm_head[false]` (and the bias rows' difference, if any), computed
    in fp32 and stored in the model's dtype, or kept in fp32 and computed in fp32 with `fp32_head`. The
    returned model has the same tokenizer, prompts, default prompt and activation, so `predict` returns
    the same scores.
    """
    import torch
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder.modules import Dense
    from sentence_transformers.sentence_transformer.modules import Pooling

    transformer, logit_score = _logit_chain_parts(cross_encoder)
    causal = transformer.model
    _check_linear_head(causal.config)
    head = causal.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear):
        raise ValueError(
            f"the output embeddings are a {type(head).__name__}, not a Linear; use score_path='logit'"
        )
    true_id, false_id = logit_score.true_token_id, logit_score.false_token_id
    with torch.no_grad():
        weight = head.weight[true_id].float()
        bias = head.bias[true_id].float() if head.bias is not None else None
        if false_id is not None:
            weight = weight - head.weight[false_id].float()
            bias = bias - head.bias[false_id].float() if bias is not None else None

    features = _feature_extraction_view(transformer, causal.get_decoder())
    hidden = head.weight.shape[1]
    dtype = torch.float32 if fp32_head else head.weight.dtype
    dense = Dense(
        hidden,
        1,
        bias=bias is not None,
        activation_function=None,
        init_weight=weight.unsqueeze(0).to(dtype),
        init_bias=bias.unsqueeze(0).to(dtype) if bias is not None else None,
        module_output_name="scores",
    ).to(head.weight.device)
    return CrossEncoder(
        modules=[features, Pooling(hidden, pooling_mode="lasttoken"), dense],
        device=str(cross_encoder.device),
        prompts=dict(cross_encoder.prompts),
        default_prompt_name=cross_encoder.default_prompt_name,
        activation_fn=cross_encoder.activation_fn,
        keep_in_fp32_modules=["2.linear"] if fp32_head else None,
    )


def _feature_extraction_view(transformer, base):
    """A Transformer module that shares `transformer`'s processor, settings and `base` weights, but runs
    the base model and writes `token_embeddings`. A shallow copy with its own submodule registry, so the
    original module keeps its causal LM."""
    view = copy.copy(transformer)
    for registry in ("_modules", "_parameters", "_buffers"):
        view.__dict__[registry] = dict(transformer.__dict__[registry])
    view.model = base
    view.transformer_task = "feature-extraction"
    view.modality_config = {
        key: {**params, "method_output_name": "last_hidden_state"}
        for key, params in transformer.modality_config.items()
    }
    view.module_output_name = "token_embeddings"
    view._method_signature_cache = {}
    signature = inspect.signature(base.forward).parameters
    view._declared_forward_params = set(signature)
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.values())
    view.model_forward_params = (
        None if takes_kwargs else view._declared_forward_params | {"input_ids", "attention_mask"}
    )
    view.unpad_inputs = transformer.unpad_inputs  # re-evaluated: unpadded with flash-attention, else padded
    setattr(view, _CAUSAL_BASE, True)
    return view


def score_head_name(cross_encoder) -> str:
    """The `named_modules()` path of the Linear that produces the score: the LM head of a LogitScore chain
    (e.g. `0.model.lm_head`), or the Dense of a hidden-state chain (`2.linear`)."""
    import torch
    from sentence_transformers.cross_encoder.modules import Dense

    modules = list(cross_encoder)
    if isinstance(modules[-1], Dense) and modules[-1].module_output_name == "scores":
        return f"{len(modules) - 1}.linear"
    transformer, _ = _logit_chain_parts(cross_encoder)
    head = transformer.model.get_output_embeddings()
    for name, module in cross_encoder.named_modules():
        if module is head and isinstance(module, torch.nn.Linear):
            return name
    raise ValueError("could not find the LM head among the model's modules; use fp32_head=False")


def set_fp32_head(cross_encoder) -> str:
    """Compute the score head in fp32 whatever the weights' dtype (a no-op in fp32): its input and weight
    are upcast, the stored weight is untouched. Returns the head's module path."""
    name = score_head_name(cross_encoder)
    cross_encoder.set_keep_in_fp32_modules([name])
    return name


class PrefixReuse:
    """Score one query's candidates with the shared token prefix computed once.

    Each pair is tokenised exactly as `preprocess` does (chat template, prompt, truncation); the longest
    common prefix of the rows' token ids runs once with a key/value cache (batch 1), and the suffixes
    (document + template tail, right-padded) run against the cache expanded to the batch, at the positions
    they would have had. The last real token's hidden state goes through the model's own score head.
    Supported: causal text rerankers (LogitScore chains and hidden-state chains built by
    `to_hidden_state_chain`) without sliding-window layers; rows with media use the normal path.
    """

    def __init__(self, cross_encoder):
        self.model = cross_encoder
        self.base, self.head = _decoder_and_head(cross_encoder)
        layer_types = getattr(self.base.config, "layer_types", None) or []
        if any("sliding" in str(t) for t in layer_types) or getattr(
            self.base.config, "use_sliding_window", False
        ):
            raise ValueError("prefix reuse does not support sliding-window attention; set prefix_reuse=False")
        self._cached: tuple[tuple[int, ...], list] | None = None
        self.pad_id = cross_encoder.tokenizer.pad_token_id

    @staticmethod
    def applies(pairs: list) -> bool:
        """Two or more text-only pairs of one query: the only case with a prefix worth sharing."""
        return (
            len(pairs) > 1
            and all(isinstance(a, str) and isinstance(b, str) for a, b in pairs)
            and len({a for a, _ in pairs}) == 1
        )

    def score(self, pairs: list, prompt: str | None = None) -> np.ndarray:
        import torch

        with torch.inference_mode():
            features = self.model.preprocess(pairs, prompt=prompt)
            mask = features["attention_mask"].bool()
            rows = [ids[m] for ids, m in zip(features["input_ids"], mask, strict=True)]
            prefix = shared_prefix_length(rows)
            if prefix == 0:
                raise ValueError(
                    "pairs of one query share no token prefix; the chat template puts no query first"
                )
            kv = self._prefix_cache(rows[0][:prefix])
            hidden = self._suffix_hidden(rows, prefix, kv)
            return finish_scores(self.model, self.head(hidden))

    def _prefix_cache(self, prefix_ids):
        key = tuple(prefix_ids.tolist())
        if self._cached is None or self._cached[0] != key:
            device = self.model.device
            out = self.base(input_ids=prefix_ids[None].to(device), use_cache=True)
            self._cached = (key, [(layer.keys, layer.values) for layer in out.past_key_values.layers])
        return self._cached[1]

    def _suffix_hidden(self, rows: list, prefix: int, kv: list):
        import torch
        from transformers import DynamicCache

        device = self.model.device
        suffixes = [row[prefix:] for row in rows]
        batch, width = len(rows), max(len(s) for s in suffixes)
        ids = torch.full((batch, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((batch, prefix + width), dtype=torch.long)
        mask[:, :prefix] = 1
        for i, suffix in enumerate(suffixes):
            ids[i, : len(suffix)] = suffix
            mask[i, prefix : prefix + len(suffix)] = 1
        cache = DynamicCache(
            ddp_cache_data=[(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in kv]
        )
        out = self.base(
            input_ids=ids.to(device), attention_mask=mask.to(device), past_key_values=cache, use_cache=True
        )
        last = torch.tensor([len(s) - 1 for s in suffixes], device=device)
        return out.last_hidden_state[torch.arange(batch, device=device), last]


def shared_prefix_length(rows: list) -> int:
    """Longest common prefix of token-id rows, leaving every row at least one token of its own."""
    import torch

    shortest = min(len(r) for r in rows)
    stacked = torch.stack([r[:shortest] for r in rows])
    same = (stacked == stacked[0]).all(dim=0)
    differs = (~same).nonzero()
    common = int(differs[0]) if len(differs) else shortest
    return min(common, shortest - 1)


def _decoder_and_head(cross_encoder) -> tuple[object, Callable]:
    """(base decoder, hidden -> raw scores) for the chains prefix reuse supports."""
    from sentence_transformers.cross_encoder.modules import Dense

    modules = list(cross_encoder)
    if getattr(modules[0], _CAUSAL_BASE, False) and isinstance(modules[-1], Dense):
        dense = modules[-1]
        return modules[0].model, lambda h: dense({"sentence_embedding": h})["scores"]
    try:
        transformer, logit_score = _logit_chain_parts(cross_encoder)
    except ValueError as exc:
        raise ValueError(f"prefix reuse: {exc}") from None
    causal = transformer.model
    lm_head = causal.get_output_embeddings()
    return causal.get_decoder(), lambda h: logit_score({"causal_logits": lm_head(h)[:, None, :]})["scores"]


def apply_fast_paths(cross_encoder, score_path: ScorePath = "logit", fp32_head: bool = False):
    """The model a worker scores with: `cross_encoder` itself, or its hidden-state chain, with the fp32
    score head if asked."""
    if score_path not in SCORE_PATHS:
        raise ValueError(f"score_path {score_path!r} is not one of {', '.join(SCORE_PATHS)}")
    if score_path == "hidden":
        return to_hidden_state_chain(cross_encoder, fp32_head=fp32_head)
    if fp32_head:
        set_fp32_head(cross_encoder)
    return cross_encoder
