"""The image demo's multimodal reranker: a tiny Qwen2-VL with random weights, built locally, no download.

The recipe follows research/tiny-video-audio-rerankers.md: a byte-level BPE tokenizer trained here with the
model's special tokens, the real processor with tiny size settings, a 2-layer 64-d language model and a
1-layer vision encoder (~150k parameters). `build_tiny_qwen2vl` writes a plain Hugging Face directory (no
modules.json: the reranker's loader must build Transformer(any-to-any) + LogitScore itself);
`save_as_cross_encoder` saves such a directory as a sentence-transformers CrossEncoder. The test suite
builds its tiny multimodal rerankers (tests/tiny_multimodal.py) from the same pieces.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from jobs.demo_assets.tiny_tokenizer import train_tokenizer

VL_SPECIALS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]

# The official Qwen2-VL-Instruct chat template, verbatim: a default system turn, any role printed (so
# sentence-transformers' query/document roles reach the model), one pad token per image or video.
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Small pixel bounds: 4..16 visual tokens per image (28x28 pixels per token after the 2x2 merge).
VL_MIN_PIXELS = 28 * 28 * 4
VL_MAX_PIXELS = 28 * 28 * 16
DEFAULT_JUDGE_PROMPT = "Judge whether the document matches the query. Answer yes or no."


def build_demo_vlm(out: str | Path, seed: int = 0) -> Path:
    """The demo's multimodal reranker: a tiny Qwen2-VL saved as a CrossEncoder directory at `out`.

    Random weights, so its scores are not meaningful; it shows the image pipeline end to end offline.
    Pass the returned directory as `--model` of `python -m jobs.rerank` with the image pairs.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".tiny-vlm-", dir=out.parent) as tmp:
        hf = build_tiny_qwen2vl(Path(tmp) / "hf", seed=seed)
        save_as_cross_encoder(hf, out)
    return out


def tiny_text_config(tok, **extra) -> dict:
    """The 2-layer 64-d language model of a tiny multimodal model, sized to the tokenizer `tok`."""
    return dict(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
        **extra,
    )


def build_tiny_qwen2vl(out: Path, seed: int = 0) -> Path:
    """A Qwen2-VL directory (Qwen2VLForConditionalGeneration + Qwen2VLProcessor: image and video)."""
    import torch
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    tok = train_tokenizer(extra_specials=VL_SPECIALS, max_length=4096)
    sizes = dict(
        min_pixels=VL_MIN_PIXELS, max_pixels=VL_MAX_PIXELS, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**sizes),
        tokenizer=tok,
        video_processor=Qwen2VLVideoProcessor(**sizes, cap_pixels_per_frame=False),
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )
    ids = tok.convert_tokens_to_ids
    config = Qwen2VLConfig(
        text_config=tiny_text_config(
            tok,
            rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 3, 3]},
        ),
        vision_config=dict(
            depth=1,
            embed_dim=32,
            hidden_size=64,
            num_heads=2,
            mlp_ratio=2,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
        ),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=True,
        architectures=["Qwen2VLForConditionalGeneration"],
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).eval()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def save_as_cross_encoder(hf_dir: Path, out: Path, prompt: str | None = DEFAULT_JUDGE_PROMPT) -> Path:
    """Wrap a multimodal LM directory as Transformer(any-to-any) + LogitScore('yes', 'no') and save it."""
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder.modules import LogitScore
    from sentence_transformers.sentence_transformer.modules import Transformer

    transformer = Transformer(
        str(hf_dir),
        transformer_task="any-to-any",
        processing_kwargs={"chat_template": {"add_generation_prompt": True}},
    )
    feature_extractor = getattr(transformer.processor, "feature_extractor", None)
    if feature_extractor is not None:
        # Pins the Whisper window: a tokenizer saved after a call would otherwise leak max_length into it.
        transformer.processing_kwargs["audio"] = {"max_length": feature_extractor.n_samples}
    ids = transformer.tokenizer.convert_tokens_to_ids
    score = LogitScore(true_token_id=ids("yes"), false_token_id=ids("no"))
    model = CrossEncoder(
        modules=[transformer, score],
        num_labels=1,
        prompts={"judge": prompt} if prompt else {},
        default_prompt_name="judge" if prompt else None,
    )
    model.save_pretrained(str(out))
    return out
