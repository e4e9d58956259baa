"""The jobs on the real topology: a local cluster of several nodes (`tests.cluster`: a head without CPUs, two
1-CPU worker nodes, all on loopback) and an S3-compatible server on loopback (moto), one of each for the
module. Jobs run as subprocesses joined with `--ray-address`; the pytest process keeps its own Ray session.

- a local `--output` that the other nodes do not share is refused in one line (exit 2), and one they share
  is accepted;
- the worker node running the preprocess tasks, the node running the media tasks of image pairs, and
  separately the node running the scoring actor, removed mid-run without warning and replaced: the job completes on s3://, nothing lost or duplicated, scores equal
  `CrossEncoder.predict`;
- a driver killed mid-run on s3:// (progress every second) resumes from the committed pieces.
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
import pytest
from sentence_transformers import CrossEncoder

from pipelines.runs.checkpoint import Checkpoint
from pipelines.storage import uris
from pipelines.storage.shared import SIMULATE_NODE_DISKS_ENV
from pipelines.storage.tables import read_table
from tests.cluster import LocalCluster, ray_cluster  # noqa: F401  (the module's cluster fixture)
from tests.conftest import REPO
from tests.integration.test_long_runs import assert_complete_and_equal_to_predict, plain_pairs
from tests.media_files import s3_server
from tests.pairs_data import write_shards

pytestmark = pytest.mark.long  # minutes: run with `bash infra/test.sh -m long`

BUCKET = "cluster-runs"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}
# Lease timings in seconds, so a test never waits on a minute's TTL; small blocks, so a run has many.
FAST = ["--lease-ttl", "5", "--lease-heartbeat", "1", "--max-length", "64", "--progress-interval", "1"]


@pytest.fixture(scope="module")
def s3():
    """The loopback S3 server's endpoint and the AWS settings that reach it, set for this process too."""
    with s3_server() as endpoint:
        assert endpoint.startswith("http://127.0.0.1:")
        env = {**AWS_ENV, "AWS_ENDPOINT_URL": endpoint, "AWS_ENDPOINT_URL_S3": endpoint}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        fsspec.AbstractFileSystem.clear_instance_cache()
        uris.filesystem(f"s3://{BUCKET}")[0].mkdir(BUCKET)
        try:
            yield env
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            fsspec.AbstractFileSystem.clear_instance_cache()


def start_job(cluster: LocalCluster, argv: list[str], aws: dict | None = None, **env) -> subprocess.Popen:
    """`python -m jobs.rerank` joined to `cluster`; `aws` also reaches its workers (a job runtime env, as
    `ray job submit --runtime-env-json` gives it)."""
    extra = dict(env)
    if aws:
        extra |= aws
        extra["RAY_JOB_CONFIG_JSON_ENV_VAR"] = json.dumps({"runtime_env": {"env_vars": aws}})
    return subprocess.Popen(
        [sys.executable, "-m", "jobs.rerank", *argv, "--ray-address", cluster.address],
        cwd=REPO,
        env=cluster.job_env(extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen, timeout_s: float = 300) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"the job ran over {timeout_s} s:\n{out[-3000:]}\n{err[-3000:]}")
    return proc.returncode, out, err


def put_pairs(table: pa.Table, local: Path, prefix: str) -> str:
    fs, _ = uris.filesystem(f"s3://{BUCKET}")
    for f in sorted(write_shards(table, local, shards=2).glob("*.parquet")):
        fs.put_file(str(f), f"{BUCKET}/{prefix}/{f.name}")
    return f"s3://{BUCKET}/{prefix}/"


def assert_ranked_once_equal_to_predict(out: str, table: pa.Table, model_dir: Path) -> dict:
    """Every input pair in ranked/ exactly once, no error row, scores equal predict's; returns the manifest."""
    ranked = read_table(uris.join(out, "ranked")).to_pylist()
    assert read_table(uris.join(out, "errors")).num_rows == 0
    key = lambda r: (r["query_id"], r["candidate_id"])  # noqa: E731
    assert sorted(key(r) for r in ranked) == sorted(key(r) for r in table.to_pylist()), "lost or duplicated"
    rows = {key(r): r for r in table.to_pylist()}
    want = CrossEncoder(str(model_dir), max_length=64).predict(
        [(rows[key(r)]["query_text"], rows[key(r)]["candidate_text"]) for r in ranked]
    )
    np.testing.assert_allclose([r["score"] for r in ranked], want, atol=1e-5, rtol=0)
    manifest = uris.read_json(uris.join(out, "manifest.json"))
    assert manifest["counts"]["pairs_in"] == table.num_rows == manifest["counts"]["scored"]
    return manifest


def test_the_cluster_is_several_nodes_on_loopback(ray_cluster):  # noqa: F811
    nodes = [n for n in ray_cluster.cluster.global_state.node_table() if n["Alive"]]
    assert {n["NodeManagerAddress"] for n in nodes} == {"127.0.0.1"}
    cpus = sorted(n["Resources"].get("CPU", 0) for n in nodes)
    assert cpus == [0, 1, 1] and sorted(ray_cluster.workers) == ["worker_a", "worker_b"]


def test_a_local_output_is_refused_unless_every_node_shares_it(ray_cluster, tmp_path, qwen3_causal):  # noqa: F811
    table = plain_pairs(3, 4)
    pairs = write_shards(table, tmp_path / "pairs", shards=1)
    argv = ["--pairs", str(pairs), "--model", str(qwen3_causal), *FAST]

    # Each node its own disk (the test setting): the probe the other nodes write is not seen by the driver.
    refused = tmp_path / "refused"
    own_disks = {SIMULATE_NODE_DISKS_ENV: "1"}
    code, _, err = finish(start_job(ray_cluster, [*argv, "--output", str(refused)], **own_disks))
    line = err.strip().splitlines()[-1]
    assert code == 2, err[-3000:]
    assert (
        line.startswith(f"error: --output {refused} is a local path")
        and "use shared storage such as s3://" in line
    )
    assert [ln for ln in err.splitlines() if ln.startswith("error:")] == [line]
    assert not (refused / "manifest.json").exists() and not (refused / "_storage_probe").exists()

    # One machine's disk, which every node shares: checked and accepted.
    shared = tmp_path / "shared"
    code, _, err = finish(start_job(ray_cluster, [*argv, "--output", str(shared)]))
    assert code == 0, err[-3000:]
    assert_complete_and_equal_to_predict(shared, table, qwen3_causal)
    assert not (shared / "_storage_probe").exists()


def wait_for(condition, proc: subprocess.Popen, what: str, timeout_s: float = 120):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(
                f"the job ended (exit {proc.returncode}) before {what}:\n{out[-3000:]}\n{err[-3000:]}"
            )
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    out, err = proc.communicate()
    pytest.fail(f"timed out waiting for {what}:\n{out[-3000:]}\n{err[-3000:]}")


def decoders() -> set[int]:
    """Pids of the media decoding children (`actors.media.sandbox`) running on this machine."""
    pids = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and b"actors.media.sandbox" in (entry / "cmdline").read_bytes():
                pids.add(int(entry.name))
        except OSError:
            continue
    return pids


def run_losing_a_node(
    cluster: LocalCluster,
    s3: dict,
    tmp_path: Path,
    model: Path,
    which: str,
    table: pa.Table | None = None,
    options: list[str] = FAST,
    media: bool = False,
) -> str:
    """Start a run on s3://, wait until the scoring actor committed a few pieces (`media`: until a media
    task decodes its first image), remove (ungracefully) the node `which` names ("actor": the scoring
    actor's; else the other worker's, which runs the read, media and preprocess tasks), add a replacement
    node, and check the run completes. Returns the output."""
    table = plain_pairs(12, 24) if table is None else table  # 288 pairs, 72 blocks of 4
    pairs = put_pairs(table, tmp_path / "pairs", f"{which}/pairs")
    out = f"s3://{BUCKET}/{which}/out"
    argv = ["--pairs", pairs, "--model", str(model), "--output", out, "--run-id", which, *options]
    argv += ["--block-rows", "4", "--max-error-rate", "0"]
    before = decoders()
    proc = start_job(cluster, argv, aws=s3)
    ckpt = Checkpoint(out)
    actor = wait_for(lambda: cluster.actor_nodes("MapWorker"), proc, "the scoring actor started")
    if media:  # the first decoding child of this job: media tasks are fetching and decoding
        wait_for(lambda: decoders() - before, proc, "a media task decoded", timeout_s=300)
    else:
        wait_for(lambda: len(ckpt.pieces()) >= 3, proc, "three pieces were committed")
    (actor_node,) = actor
    victim = actor_node if which == "actor" else next(n for n in cluster.workers if n != actor_node)
    cluster.remove_worker(victim)
    cluster.add_worker()
    code, stdout, err = finish(proc)
    assert code == 0, f"{stdout[-3000:]}\n{err[-3000:]}"
    assert len(ckpt.pieces()) == 0  # removed once the run is complete
    return out


def test_losing_the_preprocess_node_mid_run_costs_nothing(ray_cluster, s3, tmp_path, qwen3_causal):  # noqa: F811
    out = run_losing_a_node(ray_cluster, s3, tmp_path, qwen3_causal, "tasks")
    assert_ranked_once_equal_to_predict(out, plain_pairs(12, 24), qwen3_causal)


def test_losing_the_media_node_mid_run_costs_nothing(ray_cluster, s3, tmp_path, tiny_qwen2vl):  # noqa: F811
    """Image pairs: the node fetching and decoding the images (the media tasks, each decoding in its own
    child process) removed mid-run; every pair is still scored once, as predict scores it."""
    from PIL import Image

    from tests.media_files import make_image

    colours = ["red", "green", "blue", "yellow", "white", "black"]
    images = [make_image(tmp_path / "media" / f"{c}.png", colour=c) for c in colours]
    rows = [
        {"query_id": f"q{i}", "candidate_id": f"d{j}", "query_text": f"query {i}", "candidate_image": str(p)}
        for i in range(12)
        for j, p in enumerate(images[k % 6] for k in range(i, i + 24))
    ]
    table = pa.Table.from_pylist(rows)
    untruncated = FAST[: FAST.index("--max-length")] + FAST[FAST.index("--max-length") + 2 :]
    out = run_losing_a_node(
        ray_cluster, s3, tmp_path, tiny_qwen2vl.st, "media", table, untruncated, media=True
    )
    ranked = read_table(uris.join(out, "ranked")).to_pylist()
    assert read_table(uris.join(out, "errors")).num_rows == 0
    key = lambda r: (r["query_id"], r["candidate_id"])  # noqa: E731
    assert sorted(map(key, ranked)) == sorted(map(key, rows)), "lost or duplicated"
    by_key = {key(r): r for r in rows}
    source = [by_key[key(r)] for r in ranked]
    pairs = [(r["query_text"], Image.open(r["candidate_image"]).convert("RGB")) for r in source]
    want = CrossEncoder(str(tiny_qwen2vl.st)).predict(pairs, batch_size=8)
    np.testing.assert_allclose([r["score"] for r in ranked], want, atol=1e-5, rtol=0)


def test_losing_the_scoring_actor_node_mid_run_costs_nothing(ray_cluster, s3, tmp_path, qwen3_causal):  # noqa: F811
    out = run_losing_a_node(ray_cluster, s3, tmp_path, qwen3_causal, "actor")
    manifest = assert_ranked_once_equal_to_predict(out, plain_pairs(12, 24), qwen3_causal)
    # Blocks the actor was scoring when its node went (none when it was between blocks) were retried
    # without counting against their budget: every restart the manifest counts is the lost node's.
    faults = manifest["faults"]
    assert faults["actor_restarts"] == faults["actor_restarts_node_lost"], faults


def test_a_driver_killed_mid_run_resumes_on_s3(ray_cluster, s3, tmp_path, qwen3_causal):  # noqa: F811
    """Pairs and output on s3://, progress every second: the driver's process group SIGKILLed once pieces are
    committed, then the same command again resumes them (the lease of a holder gone from this host is taken
    over at once) and scores only the rest."""
    table = plain_pairs(12, 24)  # 288 pairs, 72 blocks of 4
    pairs = put_pairs(table, tmp_path / "pairs", "killed/pairs")
    out = f"s3://{BUCKET}/killed/out"
    argv = ["--pairs", pairs, "--model", str(qwen3_causal), "--output", out, "--run-id", "killed", *FAST]
    argv += ["--block-rows", "4", "--max-error-rate", "0"]
    ckpt = Checkpoint(out)
    proc = start_job(ray_cluster, argv, aws=s3)
    wait_for(lambda: ray_cluster.actor_nodes("MapWorker"), proc, "the scoring actor started")
    wait_for(lambda: len(ckpt.pieces()) >= 3, proc, "three pieces were committed")
    os.killpg(proc.pid, signal.SIGKILL)
    first_out, _ = proc.communicate()
    assert "pairs scored: " in first_out, "progress lines (on stdout) every second while scoring"
    committed = len(ckpt.pieces())

    code, stdout, err = finish(start_job(ray_cluster, argv, aws=s3))
    assert code == 0, f"{stdout[-3000:]}\n{err[-3000:]}"
    manifest = assert_ranked_once_equal_to_predict(out, table, qwen3_causal)
    counts = manifest["counts"]
    assert counts["pairs_resumed"] >= 4 * committed > 0
    assert counts["pairs_resumed"] + counts["pairs_scored_this_run"] == table.num_rows
    assert len(ckpt.pieces()) == 0  # removed once the run is complete
