"""The benchmark's pairs, arithmetic and report, on the tiny model with few pairs (no Ray, nothing timed:
the pipeline method is replaced by the same worker called in-process)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from actors.reranker.spec import RerankerSpec
from jobs.bench import methods as bench_methods
from jobs.bench.data import LengthSpec, fit_documents_to_tokens, skewed_pairs, text_pairs
from jobs.bench.models import MODEL_CONFIGS, flops_per_pair, peak_tflops
from jobs.bench.run import METHODS, BenchConfig, run_benchmark
from jobs.bench.sweep import parse_sweep
from jobs.benchmark import summary
from schemas import columns as c


def test_pairs_have_many_short_documents_and_a_long_tail():
    table = skewed_pairs(2000, per_query=16, seed=3)
    words = np.array([len(t.split()) for t in table.column("candidate_text").to_pylist()])
    median = np.median(words)
    assert 15 <= median <= 25  # LengthSpec.median_words = 20
    assert np.percentile(words, 90) > 2.5 * median and words.max() > 8 * median  # the tail
    assert np.mean(words < 2 * median) > 0.7  # most are short
    assert words.min() >= LengthSpec.min_words and words.max() <= LengthSpec.max_words
    ids = table.column(c.QUERY_ID).to_pylist()
    assert ids == sorted(ids) and len(set(ids)) == 125  # clustered by query, 16 each
    assert len(set(table.column(c.CANDIDATE_ID).to_pylist())) == 2000
    assert skewed_pairs(50, seed=3).equals(skewed_pairs(50, seed=3))


def test_fixed_length_pairs_hit_the_token_target(qwen3_causal):
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(qwen3_causal))
    table = fit_documents_to_tokens(skewed_pairs(12, per_query=4), model, pair_tokens=160)
    lengths = model.preprocess(text_pairs(table))["attention_mask"].sum(dim=1).numpy()
    assert np.all(np.abs(lengths - 160) <= 3), lengths


def test_flops_match_the_qwen3_reranker_roofline():
    """Qwen3-Reranker-0.6B: 0.94 GFLOP/token at 512 tokens, 0.481 TFLOP per pair, plus a 151,669-way head
    at the last position (docs/research performance notes, section 1.3)."""
    from transformers import Qwen3Config

    fields = {k: v for k, v in MODEL_CONFIGS["qwen3-0.6b"].items() if k != "model_type"}
    config = Qwen3Config(**fields)
    body = flops_per_pair(config, 512, score_path="hidden")
    assert body == pytest.approx(0.481e12, rel=0.01)
    assert flops_per_pair(config, 512) - body == pytest.approx(2 * 1024 * (151669 - 1))
    assert peak_tflops("NVIDIA H100 80GB HBM3", "bfloat16") == 989.4
    assert peak_tflops("NVIDIA H100 PCIe", "bfloat16") == 756.0
    assert peak_tflops("Some Future GPU", "bfloat16") is None


def test_sweep_names_are_checked():
    assert parse_sweep("batch-tokens=1024,4096") == ("batch_tokens", [1024, 4096])
    assert parse_sweep("min_fill=0,0.9") == ("min_fill", [0.0, 0.9])
    with pytest.raises(ValueError, match="one of batch_tokens, min_fill, block_rows, actors"):
        parse_sweep("threads=1,2")


def test_the_tiny_scale_model_is_the_tests_shape_unless_asked(tmp_path):
    """--scale and --simulate-rates build the tests' tiny Llama (width 64, 2 layers) unless --tiny-width /
    --tiny-layers ask for another; a width that 4 heads cannot share is a one-line setting error."""
    from jobs.benchmark import build_parser, resolve_model
    from schemas.settings import SettingError

    parser = build_parser()
    argv = ["--scale", "10", "--demo-dir", str(tmp_path), "--tiny-width", "16", "--tiny-layers", "1"]
    cfg = parser.config(parser.parse_args(argv)).validate()
    assert BenchConfig().tiny_width == 64 and BenchConfig().tiny_layers == 2
    model = resolve_model(cfg)
    assert model.endswith("tiny-llama-h16-l1-reranker")
    with open(f"{model}/hf/config.json") as f:
        config = json.load(f)
    assert (config["hidden_size"], config["num_hidden_layers"]) == (16, 1)
    with pytest.raises(SettingError, match="multiple of 8"):
        parser.config(parser.parse_args(["--scale", "10", "--tiny-width", "12"])).validate()


def _in_process_pipeline(rcfg, work, pairs_dir, output):
    """Stands in for the Ray pipeline: the same worker, called in-process on the whole set."""
    import pyarrow.parquet as pq

    from actors.reranker.worker import RerankWorker

    timed = bench_methods.worker_variant(RerankWorker(rcfg.reranker).load(), pq.read_table(pairs_dir))
    timed.extra = {"wall_s": 2.0, "startup_s": 1.0, "excl_startup_s": 1.0, "scoring_span_s": timed.seconds}
    return timed


def test_report_has_the_figures_and_scores_equal_predict(qwen3_causal, tmp_path, monkeypatch):
    monkeypatch.setattr(bench_methods, "pipeline", _in_process_pipeline)
    cfg = BenchConfig(
        reranker=RerankerSpec(model=str(qwen3_causal), batch_tokens=1024, device="cpu"),
        num_pairs=24,
        per_query=6,
        rounds=1,
        fast_path_pairs=12,
        work_dir=str(tmp_path),
    )
    report = json.loads(json.dumps(run_benchmark(cfg), default=str))

    assert {
        "machine",
        "versions",
        "settings",
        "workload",
        "methods",
        "ratios",
        "cpu_targets",
        "fast_paths",
    } <= set(report)
    assert report["machine"]["device"] == "cpu" and report["versions"]["sentence-transformers"] == "6.2.0"
    assert report["settings"]["batch_tokens"] == 1024 and report["workload"]["pairs"] == 24
    for name in METHODS:
        m = report["methods"][name]
        assert m["pairs_per_s"] > 0 and m["real_tokens_per_s"] > 0 and 0 < m["padding_efficiency"] <= 1
        assert m["max_abs_diff_vs_predict"] <= 1e-5 and m["unscored"] == 0
    pipe = report["methods"]["pipeline"]
    assert {"pairs_per_s_steady", "pairs_per_s_excl_startup", "pairs_per_s_incl_startup"} <= set(pipe)
    assert set(report["ratios"]) == {
        "pipeline_vs_rank_loop",
        "pipeline_vs_predict",
        "pipeline_vs_bare_forward",
    }
    assert set(report["cpu_targets"]) == {
        "padding_efficiency",
        "pipeline_vs_bare_forward",
        "pipeline_vs_rank_loop",
    }
    assert {"default", "hidden", "prefix_reuse", "default@short", "prefix_reuse@short"} <= set(
        report["fast_paths"]
    )
    for name, f in report["fast_paths"].items():
        assert f["max_abs_diff_vs_predict"] <= 1e-5, name
    short, full = report["fast_paths"]["default@short"], report["fast_paths"]["default"]
    assert short["mean_tokens_per_pair"] < full["mean_tokens_per_pair"]
    text = summary(report)
    assert "ratios (steady, medians): rank_loop" in text and "CPU targets:" in text


def test_scale_runs_the_rerank_job_with_the_benchmarks_pool_settings():
    from actors.pool import PoolSpec
    from jobs.bench.scale import job_args
    from jobs.rerank import build_parser

    pool = PoolSpec(actors=2, cpus_per_actor=0.5, block_rows=1024, preprocess_tasks=3)
    argv = ["--pairs", "p", "--output", "o", "--model", "m", *job_args(pool, 4096, threads=1)]
    cfg = build_parser().config(build_parser().parse_args(argv))
    assert cfg.pool == PoolSpec(
        actors=2, cpus_per_actor=0.5, block_rows=1024, preprocess_tasks=3, torch_threads=1
    )
    assert cfg.reranker.batch_tokens == 4096


def test_cpu_actors_share_the_cores_while_the_bare_methods_use_them_all(monkeypatch):
    """On CPU, (a)-(c) run on every core in the driver; each of N actors gets cores / N torch threads unless
    --torch-threads says otherwise (two 1-thread actors on two cores, not two 2-thread ones)."""
    import os
    from dataclasses import replace

    from actors.pool import PoolSpec

    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    cpu = BenchConfig(reranker=RerankerSpec(model="m", device="cpu"))
    assert (cpu.threads, cpu.actor_threads) == (8, 8)
    two = replace(cpu, pool=PoolSpec(actors=2))
    assert (two.threads, two.actor_threads) == (8, 4)
    assert two.rerank_config().pool.torch_threads == 4
    assert replace(cpu, pool=PoolSpec(actors=16)).actor_threads == 1
    assert replace(cpu, pool=PoolSpec(actors=2, torch_threads=3)).actor_threads == 3
    gpu = BenchConfig(reranker=RerankerSpec(model="m", device="cuda"))
    assert (gpu.threads, gpu.actor_threads) == (None, None)


def test_scale_shards_keep_every_pair_in_order_with_the_row_groups_asked(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from jobs.bench.scale import write_shards

    table = skewed_pairs(100, per_query=10, seed=1)
    one = write_shards(table, str(tmp_path / "one"), shards=3)
    grouped = write_shards(table, str(tmp_path / "grouped"), shards=3, row_group_rows=10)
    for directory, groups in ((one, [1, 1, 1]), (grouped, [4, 4, 4])):
        files = [f"{directory}/part-{i}.parquet" for i in range(3)]
        assert [pq.ParquetFile(f).num_row_groups for f in files] == groups  # 33/33/34 rows a file
        assert pa.concat_tables(pq.read_table(f) for f in files).equals(table)


def test_the_predict_script_baseline_writes_predicts_scores_ranked_per_query(tmp_path, llama_st_10):
    """`--scale`'s script baseline (a fresh process, as a user's script) scores as `predict` and ranks each
    query's candidates best first (1..n, scores non-increasing)."""
    import subprocess
    import sys

    import pyarrow.parquet as pq
    from sentence_transformers import CrossEncoder

    from jobs.bench.scale import write_shards

    table = skewed_pairs(24, per_query=8, seed=2)
    pairs = write_shards(table, str(tmp_path / "pairs"), shards=2)
    out = tmp_path / "ranked.parquet"
    argv = ["--pairs", pairs, "--model", str(llama_st_10), "--output", str(out), "--threads", "1"]
    subprocess.run([sys.executable, "-m", "jobs.bench.predict_script", *argv], check=True)

    ranked = pq.read_table(out).to_pylist()
    expected = CrossEncoder(str(llama_st_10)).predict(text_pairs(table))
    keys = zip(table.column(c.QUERY_ID).to_pylist(), table.column(c.CANDIDATE_ID).to_pylist(), strict=True)
    by_pair = dict(zip(keys, expected, strict=True))
    assert len(ranked) == 24
    for row in ranked:
        assert row["score"] == pytest.approx(by_pair[(row["query_id"], row["candidate_id"])], abs=1e-5)
    for query in {r["query_id"] for r in ranked}:
        rows = [r for r in ranked if r["query_id"] == query]
        assert [r["rank"] for r in rows] == list(range(1, 9))
        assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
