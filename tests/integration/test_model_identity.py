"""A scoring actor checks the model it loads against the fingerprint the driver recorded for the run: bytes
changed after the run started (a directory rewritten mid-run, or another copy on another node) fail the run
in one line instead of scoring part of it with another model."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from actors.reranker.spec import RerankerSpec
from actors.reranker.worker import RerankWorker
from pipelines.rerank.config import RerankConfig
from pipelines.rerank.run import run_rerank
from schemas.tables import InputError
from tests.integration.test_long_runs import plain_pairs
from tests.pairs_data import write_shards
from tests.tiny_models import flip_weight_byte


class ChangedBeforeLoad(RerankWorker):
    """The real worker on a model whose weights change after the driver fingerprinted them and before this
    actor loads them (once: a restarted actor would see the same changed bytes)."""

    def __init__(self, spec, torch_threads=None):
        marker = Path(spec.model) / ".changed"
        if not marker.exists():
            flip_weight_byte(Path(spec.model))
            marker.write_text("")
        super().__init__(spec, torch_threads)


def test_a_model_changed_under_the_run_fails_it_in_one_line_and_commits_nothing(
    ray_session, tmp_path, qwen3_causal
):
    model = tmp_path / "model"
    shutil.copytree(qwen3_causal, model)
    pairs = write_shards(plain_pairs(3, 4), tmp_path / "pairs", shards=1)
    cfg = RerankConfig(
        pairs=str(pairs), output=str(tmp_path / "out"), reranker=RerankerSpec(model=str(model), max_length=64)
    )
    with pytest.raises(InputError) as failed:
        run_rerank(cfg, worker_cls=ChangedBeforeLoad)
    message = str(failed.value)
    assert "\n" not in message
    assert f"model {str(model)!r} changed under the run" in message and "start a new --run-id" in message
    assert not list((tmp_path / "out" / "_scored").glob("*.parquet")), (
        "no block scored with the changed model"
    )
    assert not (tmp_path / "out" / "manifest.json").exists()
