"""Tiny rerankers built locally (random weights, a BPE tokenizer trained here, a chat template): the tests'
models, and the benchmark's `--scale` / `--simulate-rates` model, whose forward is cheap next to the CPU
work around it (templates, tokenising, collating). No network.
"""

from __future__ import annotations

from pathlib import Path

from jobs.demo_assets.tiny_tokenizer import train_tokenizer

# ChatML that prints any role, so sentence-transformers' query/document roles reach the model.
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_causal_lm(
    out: Path,
    arch: str = "qwen3",
    seed: int = 0,
    template: str = CHATML_TEMPLATE,
    max_length: int = 512,
    hidden_size: int = 64,
    layers: int = 2,
) -> Path:
    """A plain Hugging Face causal-LM directory (no modules.json): CrossEncoder builds Transformer+LogitScore."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3Config

    tok = train_tokenizer(max_length=max_length)
    tok.chat_template = template
    common = dict(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_length,
        tie_word_embeddings=True,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
    )
    if arch == "qwen3":
        config = Qwen3Config(head_dim=hidden_size // 4, architectures=["Qwen3ForCausalLM"], **common)
    elif arch == "llama":
        config = LlamaConfig(head_dim=hidden_size // 4, architectures=["LlamaForCausalLM"], **common)
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


def build_tiny_reranker(out: Path, arch: str = "llama", hidden_size: int = 64, layers: int = 2) -> Path:
    """A saved CrossEncoder (Transformer(text-generation) + LogitScore('yes', 'no')) over a tiny random
    `arch` causal LM (by default the tests' shape, 2 layers of width 64; 1 layer of width 32 makes the
    forward cheaper still next to the CPU work around it); reused when already built under `out`."""
    out = Path(out)
    if not (out / "modules.json").exists():
        build_st_reranker(build_causal_lm(out / "hf", arch=arch, hidden_size=hidden_size, layers=layers), out)
    return out
