"""Tiny multimodal rerankers built locally: Qwen2-VL (image + video) and Qwen2-Audio (audio), random weights.

The recipes follow research/tiny-video-audio-rerankers.md: a byte-level BPE tokenizer trained here with the
models' special tokens, the real processors with tiny size settings, a 2-layer 64-d language model and a
1-layer vision/audio encoder (~150k parameters each). Each builder writes a plain Hugging Face directory (no
modules.json: the reranker's loader must build Transformer(any-to-any) + LogitScore itself);
`save_as_cross_encoder` saves one as a sentence-transformers CrossEncoder.

The Qwen2-VL builder and the CrossEncoder wrapper are the demo's own (`jobs.demo_assets.tiny_vlm`, which
production code imports); only the audio model is test-only.
"""

from __future__ import annotations

from pathlib import Path

from jobs.demo_assets.tiny_tokenizer import train_tokenizer
from jobs.demo_assets.tiny_vlm import build_tiny_qwen2vl, save_as_cross_encoder, tiny_text_config

__all__ = ["build_tiny_qwen2audio", "build_tiny_qwen2vl", "save_as_cross_encoder"]

AUDIO_SPECIALS = ["<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"]
AUDIO_WINDOW_S = 5  # Whisper window of the tiny audio model (the real one has 30 s)


def build_tiny_qwen2audio(out: Path, seed: int = 0) -> Path:
    """A Qwen2-Audio directory (Qwen2AudioForConditionalGeneration + Qwen2AudioProcessor: audio)."""
    import torch
    from transformers import (
        Qwen2AudioConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2AudioProcessor,
        WhisperFeatureExtractor,
    )

    tok = train_tokenizer(extra_specials=AUDIO_SPECIALS, max_length=4096)
    fe = WhisperFeatureExtractor(
        feature_size=16,
        sampling_rate=16000,
        hop_length=160,
        chunk_length=AUDIO_WINDOW_S,
        n_fft=400,
        return_attention_mask=True,
    )
    processor = Qwen2AudioProcessor(feature_extractor=fe, tokenizer=tok)  # the class's ChatML template
    config = Qwen2AudioConfig(
        audio_config=dict(
            model_type="qwen2_audio_encoder",
            num_mel_bins=16,
            encoder_layers=1,
            encoder_attention_heads=2,
            encoder_ffn_dim=64,
            d_model=32,
            max_source_positions=fe.nb_max_frames // 2,
        ),
        text_config=dict(model_type="qwen2", **tiny_text_config(tok)),
        audio_token_index=tok.convert_tokens_to_ids("<|AUDIO|>"),
        architectures=["Qwen2AudioForConditionalGeneration"],
    )
    torch.manual_seed(seed)
    model = Qwen2AudioForConditionalGeneration(config).eval()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
