"""The reranker's spec (small, frozen, validated on the driver) and the loader that builds a
sentence-transformers CrossEncoder from it, with or without its weights."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from actors.model_source import is_remote, materialize
from actors.model_spec import ModelSpec, resolve_device_and_dtype
from actors.reranker.fast_paths import SCORE_PATHS, ScorePath
from actors.reranker.truncation import TRUNCATE_MODES, TruncateMode
from schemas.settings import SettingError, at_least, one_of, setting


@dataclass(frozen=True, kw_only=True)
class RerankerSpec(ModelSpec):
    """What a scoring actor needs to build its CrossEncoder. Small, picklable, validated on the driver."""

    model: str = setting(
        help="a sentence-transformers CrossEncoder directory, a plain causal-LM directory (scored as "
        "Transformer + LogitScore on 'yes'/'no'), a multimodal LM directory, a hub id, or an s3:// prefix"
    )
    prompt: str | None = setting(
        None,
        help="instruction passed as the prompt (default: the model's default prompt); a pair's own "
        "'instruction' column value replaces it for that pair",
    )
    prompt_name: str | None = setting(
        None, metavar="NAME", help="use the model's saved prompt NAME (one of its `prompts`) as the prompt"
    )
    truncate: TruncateMode = setting(
        "model",
        help="what gives way when a pair is over --max-length. model: as CrossEncoder.predict cuts it "
        "(scores equal predict's); document: only the document's tokens, from its end, keeping the "
        "instruction, the query and the chat template's closing turn intact",
    )
    label: int | None = setting(
        None,
        metavar="N",
        help="for a model with several labels (sequence classification), which logit is the score",
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
        one_of(self, "truncate", TRUNCATE_MODES)
        at_least(self, 0, "label")
        if self.prompt is not None and self.prompt_name is not None:
            raise SettingError("prompt_name", "give either --prompt or --prompt-name, not both")
        if self.truncate == "document" and self.prefix_reuse:
            raise SettingError(
                "truncate", "'document' cannot be combined with --prefix-reuse, which tokenises on its own"
            )
        check_against_model(self)
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
    """The run's prompt, as `CrossEncoder.predict(prompt=..., prompt_name=...)` resolves it: an explicit
    prompt, else the named saved prompt, else the model's default prompt, if it has one."""
    if spec.prompt is None and spec.prompt_name is not None:
        if spec.prompt_name not in model.prompts:
            raise ValueError(_no_prompt(spec.prompt_name, model.prompts))
        return model.prompts[spec.prompt_name]
    if spec.prompt is None and model.default_prompt_name is not None:
        return model.prompts.get(model.default_prompt_name)
    return spec.prompt


def check_labels(spec: RerankerSpec, num_labels: int) -> None:
    """A model with several labels needs `label` (which logit is the score), within its labels."""
    if num_labels > 1 and spec.label is None:
        raise SettingError(
            "label",
            f"model {spec.model!r} has {num_labels} labels; pass --label N (0 to {num_labels - 1}) to say "
            "which logit is the score",
        )
    if spec.label is not None and spec.label >= max(num_labels, 1):
        raise SettingError(
            "label", f"{spec.label} is not a label of model {spec.model!r}, which has {num_labels}"
        )


def check_against_model(spec: RerankerSpec) -> None:
    """Driver-side checks against the model's saved configuration (a few small JSON files; nothing when
    they cannot be read without a download: the worker checks again when it loads the model)."""
    if spec.prompt_name is not None:
        st_config = model_json(spec, "config_sentence_transformers.json")
        if st_config is not None:
            prompts = st_config.get("prompts") or {}
            if spec.prompt_name not in prompts:
                raise SettingError("prompt_name", _no_prompt(spec.prompt_name, prompts))
    labels = saved_num_labels(spec)
    if labels is not None:
        check_labels(spec, labels)


def _no_prompt(name: str, prompts: dict) -> str:
    names = ", ".join(sorted(prompts)) if prompts else "none: the model has no saved prompts"
    return f"{name!r} is not one of the model's saved prompts ({names})"


def model_json(spec: RerankerSpec, name: str):
    """A JSON file of the model: its content, {} when the model has no such file, None when unknown (a
    hub model not in the local cache, an unreadable store)."""
    path = os.path.expanduser(spec.model)
    try:
        if os.path.isdir(path):
            file = os.path.join(path, name)
            if not os.path.exists(file):
                return {}
            with open(file) as f:
                return json.load(f)
        if is_remote(spec.model):
            import fsspec

            fs, prefix = fsspec.core.url_to_fs(spec.model)
            key = prefix.rstrip("/") + "/" + name
            if not fs.exists(key):
                return {}
            with fs.open(key, "r") as f:
                return json.load(f)
        from huggingface_hub import try_to_load_from_cache
        from huggingface_hub.file_download import _CACHED_NO_EXIST

        cached = try_to_load_from_cache(spec.model, name, revision=spec.revision)
        if cached is _CACHED_NO_EXIST:
            return {}
        if isinstance(cached, str):
            with open(cached) as f:
                return json.load(f)
    except (OSError, ValueError):
        return None
    return None


SCORE_HEADS = ("LogitScore", "Dense", "Pooling")


def saved_num_labels(spec: RerankerSpec) -> int | None:
    """How many scores per pair the model gives, from its saved configuration (None: unknown). A score
    head after the Transformer (LogitScore, Pooling + Dense) gives one; a bare sequence-classification
    Transformer gives one per label of its config; a causal or multimodal LM without modules.json one."""
    modules = model_json(spec, "modules.json")
    config = model_json(spec, "config.json")
    if modules is None or config is None:
        return None
    if modules:
        if any(str(m.get("type", "")).rsplit(".", 1)[-1] in SCORE_HEADS for m in modules[1:]):
            return 1
        st = model_json(spec, "sentence_bert_config.json") or {}
        if st.get("transformer_task", "sequence-classification") != "sequence-classification":
            return None
    arch = (config.get("architectures") or [""])[0]
    if not arch.endswith("ForSequenceClassification"):
        return 1  # the library scores it with one label (LogitScore, or num_labels forced to 1)
    return len(config["id2label"]) if config.get("id2label") else int(config.get("num_labels", 2))


def _is_multimodal_lm_without_modules(path: str) -> bool:
    if not os.path.isdir(path) or os.path.exists(os.path.join(path, "modules.json")):
        return False
    config_path = os.path.join(path, "config.json")
    if not os.path.exists(config_path):
        return False
    with open(config_path) as f:
        archs = json.load(f).get("architectures") or [""]
    return archs[0].endswith("ForConditionalGeneration")
