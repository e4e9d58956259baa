"""A tiny multimodal (text + image) SentenceTransformer built locally: CLIP with random weights.

sentence-transformers' Transformer module loads a CLIP directory as a text/image embedder
(`get_text_features` / `get_image_features`), so a saved CLIPModel + CLIPProcessor with a BPE tokenizer
trained here is enough. About 60k parameters; no network.
"""

from __future__ import annotations

from pathlib import Path

from tests.tiny_models import train_tokenizer

IMAGE_SIZE, PATCH = 32, 8


def build_tiny_clip(out: Path, seed: int = 0) -> Path:
    """Write a sentence-transformers directory at `out` embedding text and images into 16 dimensions."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Transformer
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tok = train_tokenizer(max_length=64)
    common = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    text = dict(
        vocab_size=len(tok),
        max_position_embeddings=64,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.eos_token_id,
        **common,
    )
    config = CLIPConfig(
        text_config=text,
        vision_config=dict(image_size=IMAGE_SIZE, patch_size=PATCH, **common),
        projection_dim=16,
    )
    torch.manual_seed(seed)
    hf = out.parent / f"{out.name}-hf"
    CLIPModel(config).save_pretrained(hf)
    images = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    CLIPProcessor(image_processor=images, tokenizer=tok).save_pretrained(hf)
    SentenceTransformer(modules=[Transformer(str(hf))]).save_pretrained(str(out))
    return out
