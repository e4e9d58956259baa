"""A model that ships its own code: without --trust-remote-code the job fails before any cluster work in
one line naming the flag; with it the model loads and scores exactly as CrossEncoder(trust_remote_code=True)
predicts, and the driver warns once. No Ray: the worker class is built in-process."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

CONFIG_CODE = """from transformers import LlamaConfig


class TinyRemoteConfig(LlamaConfig):
    model_type = "tiny_remote_llama"
"""
MODELING_CODE = """from transformers import LlamaForCausalLM

from .configuration_tiny import TinyRemoteConfig


class TinyRemoteForCausalLM(LlamaForCausalLM):
    config_class = TinyRemoteConfig
"""


@pytest.fixture(scope="module")
def remote_model(tmp_path_factory) -> Path:
    """A tiny Llama whose config names a model type transformers does not know and maps the auto classes
    onto the directory's own Python files (`auto_map`), as jina-reranker-v2 and other hub models do."""
    from tests.tiny_models import build_causal_lm

    out = build_causal_lm(tmp_path_factory.mktemp("remote") / "model", arch="llama", seed=5)
    (out / "configuration_tiny.py").write_text(CONFIG_CODE)
    (out / "modeling_tiny.py").write_text(MODELING_CODE)
    config = json.loads((out / "config.json").read_text())
    config.update(
        model_type="tiny_remote_llama",
        architectures=["TinyRemoteForCausalLM"],
        auto_map={
            "AutoConfig": "configuration_tiny.TinyRemoteConfig",
            "AutoModelForCausalLM": "modeling_tiny.TinyRemoteForCausalLM",
        },
    )
    (out / "config.json").write_text(json.dumps(config))
    return out


PAIRS = [
    {
        "query_id": "q1",
        "candidate_id": "a",
        "query_text": "what streams blocks",
        "candidate_text": "ray data",
    },
    {"query_id": "q1", "candidate_id": "b", "query_text": "what streams blocks", "candidate_text": "a cat"},
]
SHIPPED = (
    "ships its own Python code (configuration_tiny.TinyRemoteConfig, modeling_tiny.TinyRemoteForCausalLM)"
)


@pytest.mark.parametrize(
    ("job", "flag"), [("rerank", "--trust-remote-code"), ("refresh", "--rerank-trust-remote-code")]
)
def test_without_the_flag_the_job_fails_in_one_line(tmp_path, capsys, remote_model, job, flag):
    import importlib

    pq.write_table(pa.Table.from_pylist(PAIRS), tmp_path / "p.parquet")
    out = ["--output", str(tmp_path / "out")]
    if job == "rerank":
        argv = ["--pairs", str(tmp_path / "p.parquet"), "--model", str(remote_model), *out]
    else:
        argv = ["--corpus", str(tmp_path), "--queries", str(tmp_path), "--embed-model", str(tmp_path)]
        argv += ["--rerank-model", str(remote_model), *out]
    assert importlib.import_module(f"jobs.{job}").main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {flag}: model '{remote_model}' {SHIPPED}") and "\n" not in err, err
    assert not (tmp_path / "out").exists()


def test_transformers_itself_refuses_the_model_without_the_flag(remote_model):
    """What the workers would have hit, had the driver not stopped the job first."""
    from sentence_transformers import CrossEncoder

    with pytest.raises(ValueError, match="trust_remote_code=True"):
        CrossEncoder(str(remote_model))


def test_with_the_flag_it_loads_scores_as_predict_and_warns_once(tmp_path, remote_model, caplog):
    from sentence_transformers import CrossEncoder

    from actors.reranker.spec import RerankerSpec
    from actors.reranker.worker import RerankWorker
    from pipelines.rerank.config import RerankConfig
    from pipelines.rerank.validate import validate_pairs

    spec = RerankerSpec(model=str(remote_model), trust_remote_code=True)
    with caplog.at_level(logging.WARNING, logger="ray_rerank"):
        for _ in range(2):  # the CLI validates, then the run validates again: one warning
            RerankConfig(pairs="p", output="o", reranker=spec).validate()
    warnings = [r for r in caplog.records if "trust_remote_code is on" in r.getMessage()]
    assert len(warnings) == 1 and str(remote_model) in warnings[0].getMessage()

    worker = RerankWorker(spec).load()
    assert type(worker.model[0].auto_model).__name__ == "TinyRemoteForCausalLM"
    scored = worker(validate_pairs(pa.Table.from_pylist(PAIRS)))
    want = CrossEncoder(str(remote_model), trust_remote_code=True).predict(
        [(p["query_text"], p["candidate_text"]) for p in PAIRS]
    )
    np.testing.assert_allclose(scored.column("score").to_numpy(), want, atol=1e-5, rtol=0)


def test_a_hub_that_does_not_answer_is_not_waited_for(monkeypatch):
    # No network call: the hub client is stubbed to time out as a driver without network would see it.
    from huggingface_hub import HfApi

    from pipelines.runs.info import HUB_TIMEOUT_S, _transport_error, hub_commit

    asked = {}

    def model_info(self, repo_id, revision=None, timeout=None):
        asked["timeout"] = timeout
        raise _transport_error()("timed out")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(HfApi, "model_info", model_info)
    # Not in the local cache either: unresolved (the run records the id as unpinned), not a crash or a hang.
    assert hub_commit("nobody/not-cached-anywhere", None) is None
    assert asked["timeout"] == HUB_TIMEOUT_S


def test_a_pinned_hub_id_is_resolved_once_per_run(monkeypatch):
    # No network call: the hub client is stubbed. `pinned` resolves the id; identity and manifest reuse it.
    from huggingface_hub import HfApi

    from actors.reranker.spec import RerankerSpec
    from pipelines.runs.info import model_fingerprint, pinned

    commit = "0123456789abcdef0123456789abcdef01234567"
    calls = []

    def model_info(self, repo_id, revision=None, timeout=None):
        calls.append((repo_id, revision))
        return type("Info", (), {"sha": commit})()

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(HfApi, "model_info", model_info)
    spec = pinned(RerankerSpec(model="someone/reranker"))
    assert spec.revision == commit
    assert model_fingerprint(spec.model, spec.revision) == {
        "revision": commit,
        "fingerprint": f"hub:{commit}",
    }
    assert calls == [("someone/reranker", None)]
