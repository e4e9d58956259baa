"""Tiny rerankers built locally (random weights, a BPE tokenizer trained here, a chat template): the
builders live in `jobs.demo_assets.tiny_lm`, which the benchmark uses too.

No network: everything a test scores with is made by these functions, once per session.
"""

from __future__ import annotations

from jobs.demo_assets.tiny_lm import CHATML_TEMPLATE, build_causal_lm, build_st_reranker
from jobs.demo_assets.tiny_tokenizer import train_tokenizer

__all__ = ["CHATML_TEMPLATE", "build_causal_lm", "build_st_reranker", "train_tokenizer"]
