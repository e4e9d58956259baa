"""A run's identity covers every setting that changes its output: the media settings that change a score
(the audio sample rate) in the identity and the refresh's score-cache key, the ones that only decide which
rows fail (caps, deadline, schemes, networks) in the identity only."""

from __future__ import annotations

from dataclasses import replace

import pyarrow as pa
import pyarrow.parquet as pq

from actors.media.spec import MediaSpec
from actors.reranker.spec import RerankerSpec
from pipelines.rerank import run
from pipelines.rerank.config import RerankConfig
from pipelines.rerank.run import identity_fields
from pipelines.runs.info import value_key
from pipelines.runs.lease import changed_fields


def test_media_settings_are_in_the_identity_and_only_score_changing_ones_in_the_cache_key(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(run, "resolved_dtype", lambda spec, pool: "float32")  # it asks Ray for GPUs
    pq.write_table(pa.table({"query_id": ["q"], "candidate_id": ["d"]}), tmp_path / "p.parquet")
    (tmp_path / "model").mkdir()
    cfg = RerankConfig(
        pairs=str(tmp_path / "p.parquet"),
        output=str(tmp_path / "out"),
        reranker=RerankerSpec(model=str(tmp_path / "model")),
    )
    files = [str(tmp_path / "p.parquet")]
    base = identity_fields(cfg, files)
    resampled = identity_fields(replace(cfg, media=MediaSpec(audio_sample_rate=8000)), files)
    capped = identity_fields(replace(cfg, media=MediaSpec(max_bytes=1024)), files)
    assert changed_fields(base, resampled) == ["media"]
    assert changed_fields(base, capped) == ["media_limits"]

    def cache_key(media: MediaSpec) -> str:
        return value_key(cfg.reranker, dtype="float32", **media.score_settings())

    assert cache_key(MediaSpec(audio_sample_rate=8000)) != cache_key(MediaSpec())
    assert cache_key(MediaSpec(max_bytes=1024)) == cache_key(MediaSpec())
