"""Integration fixtures: tiny multimodal rerankers built once per session.

Dummy AWS credentials are set here, at collection, before the shared Ray instance starts: local Ray
workers inherit the driver's environment as it was at `ray.init`, and the S3 tests talk to a loopback
S3-compatible server that accepts any credentials. Real credentials already in the environment are kept.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

for _key, _value in {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}.items():
    os.environ.setdefault(_key, _value)


@pytest.fixture(autouse=True)
def _release_actors_of_failed_runs():
    """After each test, collect the reference cycles a failed run leaves (an exception's traceback holds the
    frames that hold Ray Data's executor and its actor handles): until then Ray keeps those actors, and
    their CPUs, alive, and the next test's tasks wait for a CPU on the shared 2-CPU instance."""
    yield
    gc.collect()


@dataclass(frozen=True)
class TinyMultimodal:
    hf: Path  # plain Hugging Face directory, no modules.json
    st: Path  # the same model saved as a CrossEncoder: Transformer(any-to-any) + LogitScore('yes', 'no')


@pytest.fixture(scope="session")
def tiny_qwen2vl(models_dir) -> TinyMultimodal:
    """Tiny Qwen2-VL reranker (text, image, video)."""
    from tests.tiny_multimodal import build_tiny_qwen2vl, save_as_cross_encoder

    hf = build_tiny_qwen2vl(models_dir / "qwen2vl", seed=3)
    return TinyMultimodal(hf=hf, st=save_as_cross_encoder(hf, models_dir / "qwen2vl-st"))


@pytest.fixture(scope="session")
def tiny_qwen2audio(models_dir) -> TinyMultimodal:
    """Tiny Qwen2-Audio reranker (text, audio)."""
    from tests.tiny_multimodal import build_tiny_qwen2audio, save_as_cross_encoder

    hf = build_tiny_qwen2audio(models_dir / "qwen2audio", seed=4)
    return TinyMultimodal(hf=hf, st=save_as_cross_encoder(hf, models_dir / "qwen2audio-st"))
