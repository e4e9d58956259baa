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
    """After each test, end the Ray Data actors a failed run left alive. A run whose UDF raised keeps its
    actors (and their CPUs) while anything references the failed execution, the exception's traceback
    included; on the shared 2-CPU instance the next test's tasks then wait for a CPU, for minutes. Between
    tests no Dataset is executing, so every `MapWorker(...)` actor still alive is such a leftover. (The
    cyclic GC, half a second with torch loaded, runs only when there is one.)"""
    yield
    import ray

    if not ray.is_initialized():
        return
    from ray._private.worker import global_worker
    from ray.util.state import list_actors

    address = ray.get_runtime_context().gcs_address  # not "auto": a test may run a second instance

    def leftovers() -> list[str]:
        alive = list_actors(address=address, filters=[("state", "=", "ALIVE")], raise_on_missing_output=False)
        return [a.actor_id for a in alive if a.class_name.startswith("MapWorker(")]

    if leftovers():
        gc.collect()  # the failed execution's reference cycles end most of them
        for actor_id in leftovers():
            global_worker.core_worker.kill_actor(ray.ActorID.from_hex(actor_id), True)


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
