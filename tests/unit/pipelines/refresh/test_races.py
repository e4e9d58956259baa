"""The refresh under races, without a cluster: two nights finishing together leave LATEST at the later start;
a resumed night whose corpus changed, or a second driver on the same night, is refused before any work."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from actors.embedder import EmbedderSpec
from actors.reranker.spec import RerankerSpec
from pipelines.refresh import pipeline
from pipelines.refresh.config import RefreshConfig
from pipelines.refresh.publish import RunLayout, mark_started, publish_latest, read_latest
from pipelines.runs.lease import Lease
from schemas.tables import InputError


def test_two_nights_finishing_together_leave_latest_at_the_later_start(tmp_path):
    root = str(tmp_path)
    for run_id, started in (("night-a", 100.0), ("night-b", 200.0)):
        (tmp_path / "runs" / run_id).mkdir(parents=True)
        (tmp_path / "runs" / run_id / "_started.json").write_text(f'{{"started_at": {started}}}')
    for _ in range(20):  # many rounds of the race, each from an empty pointer
        (tmp_path / "LATEST").unlink(missing_ok=True)
        results: dict = {}
        gate = threading.Barrier(2)
        threads = [
            threading.Thread(target=_publish, args=(gate, results, root, r)) for r in ("night-b", "night-a")
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert read_latest(root) == "night-b"
        assert results["night-b"] is None  # published (or already the pointer)
        if results["night-a"] is not None:
            assert "LATEST stays at 'night-b'" in results["night-a"]


def _publish(gate: threading.Barrier, results: dict, root: str, run_id: str) -> None:
    gate.wait()
    results[run_id] = publish_latest(root, run_id)


@pytest.fixture()
def night(tmp_path, monkeypatch):
    """A refresh config over tiny inputs, and a night whose stages are replaced by a stub: what is tested
    here happens before any stage runs."""
    pq.write_table(pa.table({"doc_id": ["d"], "doc_text": ["t"]}), tmp_path / "corpus.parquet")
    pq.write_table(pa.table({"query_id": ["q"], "query_text": ["t"]}), tmp_path / "queries.parquet")
    (tmp_path / "model").mkdir()
    ran = []
    monkeypatch.setattr(pipeline._Night, "run", lambda self, *workers: ran.append(self.layout.run_id) or {})
    cfg = RefreshConfig(
        corpus=str(tmp_path / "corpus.parquet"),
        queries=str(tmp_path / "queries.parquet"),
        output=str(tmp_path / "root"),
        embedder=EmbedderSpec(model=str(tmp_path / "model")),
        reranker=RerankerSpec(model=str(tmp_path / "model")),
        run_id="night1",
    )
    return cfg, ran, tmp_path


def test_a_night_resumed_after_its_corpus_changed_is_refused_naming_it(night):
    cfg, ran, tmp_path = night
    pipeline.run_refresh(cfg)  # the first attempt (its stages stubbed) records the night's identity
    time.sleep(0.01)
    with pytest.raises(InputError, match=r"was started with a different retrieve_k;"):
        pipeline.run_refresh(RefreshConfig(**{**cfg.__dict__, "retrieve_k": 7}))
    pq.write_table(pa.table({"doc_id": ["d", "e"], "doc_text": ["t", "u"]}), tmp_path / "corpus.parquet")
    with pytest.raises(InputError, match=r"run 'night1' .* was started with a different inputs;"):
        pipeline.run_refresh(cfg)
    assert ran == ["night1"]


def test_a_second_driver_on_the_same_night_is_refused(night):
    cfg, ran, _ = night
    layout = RunLayout(cfg.output, "night1")
    other = Lease(layout.run_dir, holder="other-host:42", file=pipeline.NIGHT_LEASE, interrupt=False)
    with other, pytest.raises(InputError, match=r"being written by another driver \(other-host:42"):
        pipeline.run_refresh(cfg)
    assert ran == []
    pipeline.run_refresh(cfg)  # once it is gone
    assert ran == ["night1"]
    assert mark_started(layout) is not None


def test_a_second_overwrite_never_clears_the_attempt_a_live_driver_is_writing(night, monkeypatch):
    cfg, _, _ = night
    pipeline.run_refresh(cfg)  # the run to overwrite
    overwrite = RefreshConfig(**{**cfg.__dict__, "mode": "overwrite"})
    attempt = RunLayout(cfg.output, "night1").overwrite_attempt()
    progress = Path(attempt.run_dir) / "_stages" / "embed_corpus.json"
    progress.parent.mkdir(parents=True)
    progress.write_text("{}")  # what the first overwrite driver has done so far
    first = Lease(attempt.run_dir, holder="other-host:42", file=pipeline.NIGHT_LEASE, interrupt=False)
    with first, pytest.raises(InputError, match=r"being written by another driver \(other-host:42"):
        pipeline.run_refresh(overwrite)
    assert progress.exists(), "the live driver's attempt is left alone"

    # Once that driver is gone, its unfinished attempt starts afresh under the new driver's lease.
    seen = []

    def run(self, *workers):
        seen.append(sorted(p.name for p in Path(self.layout.run_dir).iterdir()))
        return {"published": False}

    monkeypatch.setattr(pipeline._Night, "run", run)
    monkeypatch.setattr(pipeline._Night, "publish", lambda self, manifest: manifest)
    pipeline.run_refresh(overwrite)
    assert seen == [["_night.json", pipeline.NIGHT_LEASE]], "only the new lease and identity record"
