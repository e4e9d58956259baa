"""A byte-level BPE tokenizer trained here in a second, for tiny random-weight models (no download).

The demo's tiny multimodal reranker uses it, and so do the test suite's tiny rerankers and embedders.
"""

from __future__ import annotations

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A list is a mutable sequence; a tuple is immutable.",
    "Ray Data streams blocks between operators; actors hold models.",
    "yes no 1 0 query document system assistant user relevant",
    "Les élèves étudient le français. 東京は日本の首都です。 Привет мир.",
    "def f(x): return x * 2  # python code with symbols {}[]()<>",
]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def train_tokenizer(extra_specials: list[str] | None = None, vocab_size: int = 400, max_length: int = 512):
    """A PreTrainedTokenizerFast with ChatML specials (plus `extra_specials`) and single-token score words
    ("yes", "no", "1", "0", "true", "false"); deterministic."""
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
