"""Tiny rerankers and embedders built locally (random weights, a BPE tokenizer trained here, a chat template).

No network: everything a test scores with is made by these functions, once per session.
"""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A list is a mutable sequence; a tuple is immutable.",
    "Ray Data streams blocks between operators; actors hold models.",
    "yes no 1 0 query document system assistant user relevant",
    "Les élèves étudient le français. 東京は日本の首都です。 Привет мир.",
    "def f(x): return x * 2  # python code with symbols {}[]()<>",
]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# ChatML that prints any role, so sentence-transformers' query/document roles reach the model.
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def train_tokenizer(extra_specials: list[str] | None = None, vocab_size: int = 400, max_length: int = 512):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = SPECIALS + (extra_specials or [])
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", model_max_length=max_length
    )
    # The score tokens must be single vocabulary entries.
    fast.add_tokens([w for w in ("yes", "no", "1", "0", "true", "false") if w not in fast.get_vocab()])
    return fast


def build_causal_lm(
    out: Path, arch: str = "qwen3", seed: int = 0, template: str = CHATML_TEMPLATE, max_length: int = 512
) -> Path:
    """A plain Hugging Face causal-LM directory (no modules.json): CrossEncoder builds Transformer+LogitScore."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3Config

    tok = train_tokenizer(max_length=max_length)
    tok.chat_template = template
    common = dict(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_length,
        tie_word_embeddings=True,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
    )
    if arch == "qwen3":
        config = Qwen3Config(head_dim=16, architectures=["Qwen3ForCausalLM"], **common)
    elif arch == "llama":
        config = LlamaConfig(head_dim=16, architectures=["LlamaForCausalLM"], **common)
    else:
        raise ValueError(f"unknown tiny arch {arch!r}; expected 'qwen3' or 'llama'")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def build_st_reranker(
    hf_dir: Path, out: Path, true_token: str = "yes", false_token: str = "no", prompt: str | None = None
) -> Path:
    """A saved sentence-transformers CrossEncoder: Transformer(text-generation) + LogitScore(true, false)."""
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder.modules import LogitScore
    from sentence_transformers.sentence_transformer.modules import Transformer

    transformer = Transformer(
        str(hf_dir),
        transformer_task="text-generation",
        processing_kwargs={"chat_template": {"add_generation_prompt": True}},
    )
    tok = transformer.tokenizer
    score = LogitScore(
        true_token_id=tok.convert_tokens_to_ids(true_token),
        false_token_id=tok.convert_tokens_to_ids(false_token),
    )
    prompts = {"judge": prompt} if prompt else {}
    model = CrossEncoder(
        modules=[transformer, score],
        num_labels=1,
        prompts=prompts,
        default_prompt_name="judge" if prompt else None,
    )
    model.save_pretrained(str(out))
    return out
