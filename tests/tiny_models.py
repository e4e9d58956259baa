"""Tiny rerankers built locally (random weights, a BPE tokenizer trained here, a chat template): the
builders live in `jobs.demo_assets.tiny_lm`, which the benchmark uses too. `build_bert_cross_encoder`
makes a classic cross-encoder (BERT-style sequence classification, a WordPiece vocabulary written here).

No network: everything a test scores with is made by these functions, once per session.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

from jobs.demo_assets.tiny_lm import CHATML_TEMPLATE, build_causal_lm, build_st_reranker
from jobs.demo_assets.tiny_tokenizer import train_tokenizer

__all__ = [
    "CHATML_TEMPLATE",
    "build_bert_cross_encoder",
    "build_causal_lm",
    "build_st_reranker",
    "train_tokenizer",
]

BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
BERT_WORDS = [
    "ray",
    "data",
    "streams",
    "blocks",
    "to",
    "actors",
    "that",
    "hold",
    "models",
    "and",
    "score",
    "pairs",
    "query",
    "document",
    "word",
    "judge",
    "is",
    "it",
    "relevant",
    "the",
    "a",
    "of",
    "answer",
    "question",
    "duplicate",
    "id",
]


def build_bert_cross_encoder(out: Path, num_labels: int = 1, seed: int = 0, max_length: int = 512) -> Path:
    """A plain Hugging Face `BertForSequenceClassification` directory (no modules.json), as MiniLM / BERT
    cross-encoders ship: CrossEncoder loads it as Transformer(sequence-classification), `num_labels`
    scores a pair. The WordPiece vocabulary is written here: whole words, then single characters and
    their `##` continuations, so any ASCII text tokenises without [UNK]."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab = [*BERT_SPECIALS, *BERT_WORDS, *chars, *("##" + ch for ch in chars)]
    ids = {token: i for i, token in enumerate(dict.fromkeys(vocab))}
    tok = BertTokenizerFast(vocab=ids, do_lower_case=True, model_max_length=max_length)
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=max_length,
        num_labels=num_labels,
        initializer_range=0.5,  # spread the random scores apart: no near-ties to rank
        architectures=["BertForSequenceClassification"],
    )
    torch.manual_seed(seed)
    BertForSequenceClassification(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def flip_weight_byte(model_dir: Path, tensor: str = "model.norm.weight") -> None:
    """Retrain one weight in place: the exponent byte of the first float of `tensor` (a norm weight of 1.0
    becomes 0.25), same file size, same path."""
    path = model_dir / "model.safetensors"
    with open(path, "r+b") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        assert header[tensor]["dtype"] == "F32"
        at = 8 + size + header[tensor]["data_offsets"][0] + 3  # little-endian: byte 3 holds the exponent
        f.seek(at)
        byte = f.read(1)[0]
        f.seek(at)
        f.write(bytes([byte ^ 0x01]))
