"""The reranker's spec (small, frozen, validated on the driver) and the loader that builds a
sentence-transformers CrossEncoder from it, with or without its weights."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from actors.model_source import materialize
from actors.model_spec import ModelSpec, resolve_device_and_dtype
from actors.reranker.fast_paths import SCORE_PATHS, ScorePath
from schemas.settings import one_of, setting


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
        "lm_head[false]), which skips the LM head",
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


def load_cross_encoder(spec: RerankerSpec, weights: bool = True):
    """Load the CrossEncoder (`weights=False`: on the meta device, for preprocessing only: the tokenizer,
    processor, chat template and prompts, without reading a weight). A saved sentence-transformers directory loads as saved; a plain causal LM gets
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
    if not weights:
        kwargs["model_kwargs"]["device_map"] = "meta"
        kwargs.pop("device")
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
        return CrossEncoder(
            modules=[transformer, LogitScore(yes, no)], num_labels=1, device=device if weights else "meta"
        )
    return CrossEncoder(path, **kwargs)


def default_prompt(spec: RerankerSpec, model) -> str | None:
    """As `CrossEncoder.predict` does: no explicit prompt means the model's default prompt, if it has one."""
    if spec.prompt is None and model.default_prompt_name is not None:
        return model.prompts.get(model.default_prompt_name)
    return spec.prompt


def _is_multimodal_lm_without_modules(path: str) -> bool:
    if not os.path.isdir(path) or os.path.exists(os.path.join(path, "modules.json")):
        return False
    config_path = os.path.join(path, "config.json")
    if not os.path.exists(config_path):
        return False
    with open(config_path) as f:
        archs = json.load(f).get("architectures") or [""]
    return archs[0].endswith("ForConditionalGeneration")
