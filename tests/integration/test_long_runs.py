"""Long runs that can be trusted, on the shared local Ray: a killed scoring actor, a killed driver and its
resume, run identity, a second driver, non-finite scores, error-rate exits, progress lines."""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sentence_transformers import CrossEncoder

from actors.pool import PoolSpec
from actors.reranker.spec import RerankerSpec
from actors.reranker.worker import RerankWorker
from jobs import rerank as job
from pipelines.rerank.config import RerankConfig
from pipelines.rerank.run import run_rerank
from pipelines.runs import progress
from pipelines.runs.checkpoint import Checkpoint
from pipelines.storage import uris
from schemas.tables import JobFailed
from tests.conftest import start_job_on_session
from tests.pairs_data import WORDS, write_shards


def plain_pairs(n_queries: int, per_query: int) -> pa.Table:
    rows = [
        {
            "query_id": f"q{q}",
            "candidate_id": f"d{k}",
            "query_text": f"query {q}",
            "candidate_text": " ".join(WORDS[(q + k + j) % len(WORDS)] for j in range(2 + k % 5)),
        }
        for q in range(n_queries)
        for k in range(per_query)
    ]
    return pa.Table.from_pylist(rows)


def assert_complete_and_equal_to_predict(out: Path, table: pa.Table, model_dir: Path, max_length=64):
    """Every input pair is in ranked/ or errors/ exactly once, and ranked scores equal predict's."""
    ranked = pq.read_table(out / "ranked").to_pylist()
    errors = pq.read_table(out / "errors").to_pylist() if (out / "errors").exists() else []
    key = lambda r: (r["query_id"], r["candidate_id"])  # noqa: E731
    seen = sorted([key(r) for r in ranked] + [key(r) for r in errors])
    assert seen == sorted(key(r) for r in table.to_pylist()), "lost or duplicated pairs"
    rows = {key(r): r for r in table.to_pylist()}
    model = CrossEncoder(str(model_dir), max_length=max_length)
    want = model.predict([(rows[key(r)]["query_text"], rows[key(r)]["candidate_text"]) for r in ranked])
    np.testing.assert_allclose([r["score"] for r in ranked], want, atol=1e-5, rtol=0)


class SlowWorker(RerankWorker):
    """The real worker, slowed to ~0.5 s a block so a test can act while a run is in flight."""

    def __call__(self, table, **kwargs):
        time.sleep(0.5)
        return super().__call__(table, **kwargs)


class NaNWorker(RerankWorker):
    """Adversarial double: the model returns NaN for pairs whose document mentions 'overflow'."""

    def forward(self, features):
        scores = np.asarray(super().forward(features), dtype=np.float32)
        texts = self.model.tokenizer.batch_decode(features["input_ids"])
        scores[[i for i, text in enumerate(texts) if "overflow" in text]] = np.nan
        return scores


def test_a_killed_scoring_actor_costs_nothing(ray_session, tmp_path, qwen3_causal, caplog):
    caplog.set_level(logging.INFO)
    table = plain_pairs(6, 16)
    pairs = write_shards(table, tmp_path / "pairs", shards=2)
    cfg = RerankConfig(
        pairs=str(pairs),
        output=str(tmp_path / "out"),
        reranker=RerankerSpec(model=str(qwen3_causal), max_length=64),
        pool=PoolSpec(block_rows=4),
    )
    ckpt, killed = Checkpoint(cfg.output), []

    def kill_the_actor_once_a_piece_is_committed():
        from ray.util.state import list_actors

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            if ckpt.pieces():
                for actor in list_actors(filters=[("state", "=", "ALIVE")]):
                    if "SlowWorker" in actor.class_name and actor.pid:
                        os.kill(actor.pid, signal.SIGKILL)
                        killed.append(actor.pid)
            time.sleep(0.05)

    killer = threading.Thread(target=kill_the_actor_once_a_piece_is_committed)
    killer.start()
    progress.configure(0.2)
    progress.logger.addHandler(caplog.handler)
    progress.logger.setLevel(logging.INFO)
    try:
        manifest = run_rerank(cfg, worker_cls=SlowWorker)
    finally:
        progress.logger.removeHandler(caplog.handler)
        progress.configure(30.0)
    killer.join()
    assert killed, "the scoring actor was never found"
    assert manifest["counts"]["pairs_in"] == table.num_rows and manifest["counts"]["failed"] == 0
    assert_complete_and_equal_to_predict(tmp_path / "out", table, qwen3_causal)
    log = caplog.text
    assert "stage score: started" in log and "stage score: finished" in log and "stage rank: finished" in log
    assert "pairs scored: " in log and "/s, ETA" in log  # the periodic progress line


def test_a_killed_driver_resumes_from_committed_pieces(ray_session, tmp_path, qwen3_causal):
    table = plain_pairs(10, 16)
    pairs = write_shards(table, tmp_path / "pairs", shards=4)
    out = tmp_path / "out"
    argv = ["--pairs", str(pairs), "--model", str(qwen3_causal), "--output", str(out)]
    argv += ["--run-id", "night1", "--max-length", "64", "--block-rows", "2", "--max-error-rate", "0"]
    driver = start_job_on_session("jobs.rerank", argv)
    ckpt = Checkpoint(str(out))
    deadline = time.monotonic() + 240
    while len(ckpt.pieces()) < 3 and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(driver.pid, signal.SIGKILL)  # preemption: the whole driver process group, no clean-up
    driver.wait()
    committed = ckpt.committed_rows()
    assert 0 < committed < table.num_rows, f"kill landed outside scoring ({committed} committed)"
    assert not (out / "manifest.json").exists()

    assert job.main(argv) == 0  # same run id: resumes at once (the dead driver's lease is taken over)
    manifest = uris.read_json(str(out / "manifest.json"))
    counts = manifest["counts"]
    assert counts["pairs_resumed"] >= committed > 0
    assert counts["pairs_scored_this_run"] == table.num_rows - counts["pairs_resumed"] < table.num_rows
    assert_complete_and_equal_to_predict(out, table, qwen3_causal)
    assert not (out / "_scored").exists() and not (out / "_lease.json").exists()


def test_run_identity_and_a_second_driver_fail_in_one_line(ray_session, tmp_path, qwen3_causal, capsys):
    model = tmp_path / "model"
    shutil.copytree(qwen3_causal, model)
    pairs = write_shards(plain_pairs(2, 3), tmp_path / "pairs", shards=1)
    out = tmp_path / "out"
    argv = ["--pairs", str(pairs), "--model", str(model), "--output", str(out), "--run-id", "r1"]
    assert job.main(argv) == 0
    assert job.main(argv) == 0 and "r1" in capsys.readouterr().out  # the same request: the complete run

    def fails_with(args, message):
        assert job.main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and message in err, err

    fails_with([*argv, "--prompt", "Judge:"], "is complete with a different prompt")
    fails_with(argv[:-2], "already holds the complete run 'r1'; pass --run-id r1")
    weights = next(model.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one byte retrained in place
    weights.write_bytes(bytes(data))
    fails_with(argv, "is complete with a different model")
    assert job.main([*argv, "--mode", "overwrite"]) == 0

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        holder = f"{socket.gethostname()}:{sleeper.pid}"
        uris.write_json(
            str(tmp_path / "out2" / "_lease.json"),
            {"holder": holder, "host": socket.gethostname(), "pid": sleeper.pid, "heartbeat": time.time()},
        )
        fails_with([*argv[:5], str(tmp_path / "out2")], f"being written by another driver ({holder}")
    finally:
        sleeper.kill()


def test_non_finite_scores_all_failing_input_and_the_error_rate(ray_session, tmp_path, qwen3_causal, capsys):
    table = plain_pairs(3, 4)
    texts = table.column("candidate_text").to_pylist()
    texts[1] = texts[6] = "an overflow in fp16"
    table = table.set_column(3, "candidate_text", pa.array(texts))
    pairs = write_shards(table, tmp_path / "pairs", shards=1)
    cfg = RerankConfig(
        pairs=str(pairs), output=str(tmp_path / "nan"), reranker=RerankerSpec(model=str(qwen3_causal))
    )
    manifest = run_rerank(cfg, worker_cls=NaNWorker)
    errors = sorted(pq.read_table(tmp_path / "nan" / "errors").to_pylist(), key=lambda e: e["query_id"])
    assert [(e["query_id"], e["candidate_id"], e["stage"]) for e in errors] == [
        ("q0", "d1", "score"),
        ("q1", "d2", "score"),
    ]
    assert all(e["error"].startswith("non-finite score nan") for e in errors)
    assert pq.read_table(tmp_path / "nan" / "ranked").num_rows == table.num_rows - 2
    assert manifest["errors"]["exceeded"] and manifest["counts"]["failed"] == 2

    dead = table.set_column(3, "candidate_text", pa.nulls(table.num_rows, pa.string()))
    argv = ["--pairs", str(write_shards(dead, tmp_path / "dead", shards=1)), "--model", str(qwen3_causal)]
    assert job.main([*argv, "--output", str(tmp_path / "all-failed")]) == 3
    captured = capsys.readouterr()
    assert f"12 of {table.num_rows} pairs failed (100.0%, over --max-error-rate 0.01)" in captured.err
    out = tmp_path / "all-failed"
    assert (out / "manifest.json").exists() and (out / "ranked").is_dir()
    assert pq.read_table(out / "errors").num_rows == table.num_rows
    assert not list((out / "ranked").glob("*.parquet"))


class PoisonWorker(RerankWorker):
    """Adversarial double: its process dies (as in an out-of-memory kill) whenever it scores a set of rows
    holding the candidate `poison`; every other pair is scored by the real worker."""

    def _score_rows(self, table, rows, *args):
        if "poison" in table.column("candidate_id").take(pa.array(rows)).to_pylist():
            os._exit(1)
        return super()._score_rows(table, rows, *args)


def poison_pairs() -> pa.Table:
    table = plain_pairs(n_queries=4, per_query=6)
    rows = table.to_pylist()
    rows[10]["candidate_id"] = "poison"
    return pa.Table.from_pylist(rows)


def test_a_pair_that_kills_its_actor_is_isolated_or_named(ray_session, tmp_path, qwen3_causal):
    table = poison_pairs()
    pairs = write_shards(table, tmp_path / "pairs", shards=1)
    spec = RerankerSpec(model=str(qwen3_causal), max_length=64)
    # Blocks of 2 rows: the poison's block dies once, then the poison dies alone twice (each death is an
    # actor restart, ~10 s on 2 cores); the bisection of bigger blocks is the quarantine's unit test.
    retries = PoolSpec(block_rows=2, max_restarts=8, max_task_retries=8)
    cfg = RerankConfig(
        pairs=str(pairs), output=str(tmp_path / "out"), reranker=spec, pool=retries, max_error_rate=0.1
    )
    manifest = run_rerank(cfg, worker_cls=PoisonWorker)
    errors = pq.read_table(tmp_path / "out" / "errors").to_pylist()
    assert [(e["candidate_id"], e["stage"]) for e in errors] == [("poison", "score")]
    assert errors[0]["error"].startswith("killed its scoring actor on every attempt")
    assert manifest["counts"]["scored"] == table.num_rows - 1
    assert_complete_and_equal_to_predict(tmp_path / "out", table, qwen3_causal)

    # Too few retries to isolate it: the job fails in one line naming the block's first pairs.
    few = PoolSpec(block_rows=8, max_restarts=1, max_task_retries=1)
    cfg = RerankConfig(pairs=str(pairs), output=str(tmp_path / "out2"), reranker=spec, pool=few)
    try:
        run_rerank(cfg, worker_cls=PoisonWorker)
    except JobFailed as exc:
        message = str(exc)
    else:
        raise AssertionError("the run should have failed")
    assert "\n" not in message and "kept killing their scoring actor" in message
    assert re.search(r"8 pairs starting (q\d/\w+, ){4}q\d/\w+;", message) and "--max-task-retries" in message
