"""Benchmark models and their arithmetic: random-weight rerankers with a published model's shape, FLOPs per
pair, and the accelerator's peak, for model FLOP utilisation (MFU).

A random-weight model has the real model's cost exactly (same shapes, same kernels), so throughput and MFU
measured on it hold for the real checkpoint; its scores mean nothing and are only compared with themselves.
"""

from __future__ import annotations

import json
from pathlib import Path

# Qwen/Qwen3-Reranker-0.6B = Qwen3-0.6B's config.json (tied embeddings; 151,669 tokens in the tokenizer).
MODEL_CONFIGS: dict[str, dict] = {
    "qwen3-0.6b": dict(
        model_type="qwen3",
        hidden_size=1024,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        intermediate_size=3072,
        vocab_size=151669,
        max_position_embeddings=40960,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
    ),
}

# Dense (no sparsity) peak TFLOP/s by dtype for GPUs matched on torch.cuda.get_device_name(); datasheets.
GPU_PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    ("H200", {"bfloat16": 989.4, "float16": 989.4, "float32": 494.7}),  # fp32 = TF32 tensor cores
    ("H100 PCIe", {"bfloat16": 756.0, "float16": 756.0, "float32": 378.0}),
    ("H100", {"bfloat16": 989.4, "float16": 989.4, "float32": 494.7}),
    ("A100", {"bfloat16": 312.0, "float16": 312.0, "float32": 156.0}),
    ("L40S", {"bfloat16": 362.0, "float16": 362.0, "float32": 183.0}),
    ("L4", {"bfloat16": 121.0, "float16": 121.0, "float32": 60.0}),
    ("A10", {"bfloat16": 125.0, "float16": 125.0, "float32": 62.5}),
]


def build_random_reranker(
    config_name: str, out: str | Path, tokenizer_from: str, dtype: str = "bfloat16"
) -> Path:
    """Save a CrossEncoder (Transformer(text-generation) + LogitScore('yes', 'no')) with `config_name`'s
    shape and random weights under `out`, using the tokenizer and chat template of the reranker directory
    `tokenizer_from` (its token ids all fit the larger vocabulary). Reused when already built."""
    import torch
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder.modules import LogitScore, Transformer
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if config_name not in MODEL_CONFIGS:
        raise ValueError(
            f"unknown --model-config {config_name!r}; expected one of {', '.join(MODEL_CONFIGS)}"
        )
    out = Path(out)
    stamp = out / "bench-model.json"
    recipe = {"config": config_name, "tokenizer_from": str(tokenizer_from), "dtype": dtype}
    if stamp.is_file() and json.loads(stamp.read_text()) == recipe:
        return out
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_from))
    fields = dict(MODEL_CONFIGS[config_name])
    config = AutoConfig.for_model(
        fields.pop("model_type"),
        **{"architectures": ["Qwen3ForCausalLM"], **fields},
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    if len(tokenizer) > config.vocab_size:
        raise ValueError(
            f"tokenizer of {tokenizer_from} has {len(tokenizer)} tokens, more than {config.vocab_size}"
        )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    hf_dir = out / "hf"
    model.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    del model
    transformer = Transformer(str(hf_dir), transformer_task="text-generation")
    tok = transformer.tokenizer
    yes, no = (tok.encode(w, add_special_tokens=False) for w in ("yes", "no"))
    score = LogitScore(true_token_id=yes[0], false_token_id=no[0])
    CrossEncoder(modules=[transformer, score]).save_pretrained(str(out))
    stamp.write_text(json.dumps(recipe))
    return out


def flops_per_pair(config, tokens: int, score_path: str = "logit") -> float:
    """Forward FLOPs of one pair of `tokens` tokens: 2 x non-embedding weights per token, causal
    attention (QK^T and AV over half the keys on average), and the score head at the last position only
    (the LM head's full vocabulary on the logit path, one row on the hidden path)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    h, layers = text.hidden_size, text.num_hidden_layers
    heads, kv = text.num_attention_heads, text.num_key_value_heads
    head_dim = getattr(text, "head_dim", None) or h // heads
    attn = h * heads * head_dim + 2 * h * kv * head_dim + heads * head_dim * h
    mlp = 3 * h * text.intermediate_size
    per_token = 2 * layers * (attn + mlp)
    attention = 2 * layers * heads * head_dim * tokens * tokens  # 2 matmuls x 2 FLOP x S^2 / 2 (causal)
    head = 2 * h * (text.vocab_size if score_path == "logit" else 1)
    return per_token * tokens + attention + head


def peak_tflops(device_name: str, dtype: str) -> float | None:
    """Datasheet dense peak for a GPU name and dtype, or None when the GPU is not in the table."""
    for key, peaks in GPU_PEAK_TFLOPS:
        if key.lower() in device_name.lower():
            return peaks.get(dtype)
    return None
