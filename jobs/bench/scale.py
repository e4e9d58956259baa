"""Two benchmark modes where the model is cheap next to the CPU work around it (a 0.6B reranker on an H100):

- `--scale N`: N pairs (`--per-query` candidates per query, skewed lengths, `--shards` Parquet files)
  scored by a tiny random Llama reranker, `CrossEncoder.predict` (batch 32) against `python -m jobs.rerank` end
  to end (its own process: Ray start-up, preprocessing, scoring, ranking, writing), and against the same job
  connecting to an already running local Ray instance (as a job submitted to a cluster finds it: no Ray
  start or stop), side by side in one run. `predict` runs in the benchmark's own process (imports done,
  the model cached after round 1); `predict_script` is the same call as a user's script makes it
  (`jobs.bench.predict_script`: a fresh process that imports, reads, loads, predicts, ranks and writes),
  which starts as `jobs.rerank` does.
- `--simulate-rates R1,R2,...`: the pipeline with a scorer double whose forward sleeps (releasing the GIL, as
  a GPU kernel does) for a fixed time per padded token, set so that it scores R pairs/s at the set's mean
  token count. Preprocessing and collating are real. It reports the double's busy fraction over the scoring
  stage once warm (first forward to last): the figure that predicts accelerator utilisation.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from unittest import mock

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from actors.reranker.spec import RerankerSpec
from actors.reranker.worker import RerankWorker, load_cross_encoder
from jobs.bench.data import skewed_pairs, text_pairs
from schemas.settings import SettingError

SAMPLE_PAIRS = 2000  # pairs preprocessed on the driver to learn the mean token count
# every jobs.rerank run's environment, and its workers'
JOB_ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def parse_rates(text: str | None) -> list[float]:
    """`--simulate-rates 1000,2000` as floats (each > 0)."""
    if text is None:
        return []
    try:
        rates = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        rates = []
    if not rates or min(rates) <= 0:
        raise SettingError("simulate_rates", f"{text!r}: give positive pairs/s values, e.g. 1000,2000")
    return rates


def write_shards(table: pa.Table, directory: str, shards: int, row_group_rows: int | None = None) -> str:
    """`table` as `shards` Parquet files in order, each one row group (or groups of `row_group_rows`)."""
    os.makedirs(directory, exist_ok=True)
    bounds = np.linspace(0, table.num_rows, shards + 1).astype(int)
    for i in range(shards):
        part = table.slice(bounds[i], bounds[i + 1] - bounds[i])
        pq.write_table(
            part, f"{directory}/part-{i}.parquet", row_group_size=row_group_rows or max(len(part), 1)
        )
    return directory


def predict_run(model: str, table: pa.Table, threads: int) -> dict:
    """`CrossEncoder.predict` over every pair, as a user would call it (its default batch size, 32)."""
    import torch

    torch.set_num_threads(threads)
    started = time.perf_counter()
    encoder = load_cross_encoder(RerankerSpec(model=model, device="cpu"))
    loaded = time.perf_counter()
    encoder.predict(text_pairs(table), show_progress_bar=False)
    ended = time.perf_counter()
    return {
        "wall_s": ended - started,
        "load_s": loaded - started,
        "pairs_per_s": table.num_rows / (ended - started),
    }


@contextmanager
def running_cluster(cpus: int) -> Iterator[str]:
    """A local Ray instance started in this process before the clock and stopped after it; yields its
    address for `jobs.rerank --ray-address`."""
    import ray

    with mock.patch.dict(os.environ, JOB_ENV):  # Ray's processes inherit it, the job's workers from them
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def timed_run(cmd: list[str], env: dict) -> float:
    """Run `cmd` (`python -m MODULE ...`) to its exit; seconds from launch to exit. A failure raises with
    the module's name and the end of its stderr."""
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{cmd[2]} exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    return wall


def rerank_run(
    model: str, pairs: str, output: str, rows: int, args: list[str], address: str | None = None
) -> dict:
    """`python -m jobs.rerank` in its own process, timed from launch to exit; it starts its own local Ray
    instance, or connects to `address` (with the instance's token, as a client must). The scoring stage's
    own rate from its manifest."""
    cmd = [sys.executable, "-m", "jobs.rerank", "--pairs", pairs, "--output", output, "--model", model, *args]
    env = {**os.environ, **JOB_ENV}
    if address is not None:
        cmd += ["--ray-address", address]
        env["RAY_AUTH_MODE"] = "token"
    env.pop("RAY_ADDRESS", None)
    wall = timed_run(cmd, env)
    with open(os.path.join(output, "manifest.json")) as f:
        manifest = json.load(f)
    score_s = manifest["timings"]["score_s"]
    return {
        "wall_s": wall,
        "pairs_per_s": rows / wall,
        "score_s": score_s,
        "scoring_pairs_per_s": rows / score_s,
        "padding_efficiency": manifest["tokens"]["padding_efficiency"],
        "scoring_actor": manifest["scoring_actor"],
        "timings": manifest["timings"],
    }


def predict_script_run(model: str, pairs: str, output: str, rows: int, threads: int) -> dict:
    """`python -m jobs.bench.predict_script` in its own process, timed from launch to exit."""
    cmd = [sys.executable, "-m", "jobs.bench.predict_script", "--pairs", pairs, "--model", model]
    cmd += ["--output", os.path.join(output, "ranked.parquet"), "--threads", str(threads)]
    os.makedirs(output, exist_ok=True)
    wall = timed_run(cmd, {**os.environ, **JOB_ENV})
    return {"wall_s": wall, "pairs_per_s": rows / wall}


def job_args(pool, batch_tokens: int, threads: int) -> list[str]:
    """The benchmark's pool and budget settings as `jobs.rerank` flags, so `--scale` runs the job as set."""
    args = ["--torch-threads", str(threads), "--batch-tokens", str(batch_tokens)]
    for flag, value in (
        ("--actors", pool.actors),
        ("--cpus-per-actor", pool.cpus_per_actor),
        ("--block-rows", pool.block_rows),
        ("--preprocess-tasks", pool.preprocess_tasks),
    ):
        if value is not None:
            args += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    return args


SCALE_METHODS = ("rerank", "rerank_on_cluster", "predict", "predict_script")


def run_scale(cfg, model: str) -> dict:
    """`--scale`: predict vs jobs.rerank (own Ray instance, and on a running one), interleaved over
    `cfg.rounds` in a rotating order; medians."""
    table = skewed_pairs(cfg.scale, cfg.per_query, cfg.lengths, cfg.seed)
    root = cfg.work_dir or tempfile.mkdtemp(prefix="rerank-scale-")
    pairs = write_shards(table, os.path.join(root, "pairs"), cfg.shards, cfg.row_group_rows)
    threads = os.cpu_count() or 1  # predict gets every core, as a user would run it
    actor_threads = cfg.actor_threads or threads  # the actors share the cores out
    args = [*job_args(cfg.pool, cfg.reranker.batch_tokens, actor_threads), "--progress-interval", "0"]
    runs: dict[str, list[dict]] = {name: [] for name in SCALE_METHODS}
    try:
        for r in range(cfg.rounds):
            turn = r % len(SCALE_METHODS)
            for name in SCALE_METHODS[turn:] + SCALE_METHODS[:turn]:
                out = os.path.join(root, f"{name}-{r}")
                if name == "predict":
                    runs[name].append(predict_run(model, table, threads))
                elif name == "predict_script":
                    runs[name].append(predict_script_run(model, pairs, out, table.num_rows, threads))
                elif name == "rerank":
                    runs[name].append(rerank_run(model, pairs, out, table.num_rows, args))
                else:
                    with running_cluster(threads) as address:
                        runs[name].append(rerank_run(model, pairs, out, table.num_rows, args, address))
                shutil.rmtree(out, ignore_errors=True)
                print(
                    f"[benchmark] round {r + 1}/{cfg.rounds} {name}: {runs[name][-1]['wall_s']:.1f} s",
                    flush=True,
                )
    finally:
        if cfg.work_dir is None:
            shutil.rmtree(root, ignore_errors=True)
    median = {
        "predict": statistics.median(x["pairs_per_s"] for x in runs["predict"]),
        "predict_script": statistics.median(x["pairs_per_s"] for x in runs["predict_script"]),
        "rerank_scoring": statistics.median(x["scoring_pairs_per_s"] for x in runs["rerank"]),
        "rerank_end_to_end": statistics.median(x["pairs_per_s"] for x in runs["rerank"]),
        "rerank_on_cluster": statistics.median(x["pairs_per_s"] for x in runs["rerank_on_cluster"]),
    }
    return {
        "mode": "scale",
        "pairs": table.num_rows,
        "queries": table.num_rows // cfg.per_query,
        "shards": cfg.shards,
        "row_group_rows": cfg.row_group_rows,
        "model": model,
        "torch_threads": {"predict": threads, "rerank_actor": actor_threads},
        "rerank_args": args,
        "pairs_per_s": median,
        "ratio_end_to_end_vs_predict": median["rerank_end_to_end"] / median["predict"],
        "ratio_on_cluster_vs_predict": median["rerank_on_cluster"] / median["predict"],
        "ratio_end_to_end_vs_predict_script": median["rerank_end_to_end"] / median["predict_script"],
        "ratio_per_round": [
            {
                **{
                    k: runs[k][i]["pairs_per_s"] / runs["predict"][i]["pairs_per_s"]
                    for k in SCALE_METHODS[:2]
                },
                "rerank_vs_predict_script": runs["rerank"][i]["pairs_per_s"]
                / runs["predict_script"][i]["pairs_per_s"],
            }
            for i in range(cfg.rounds)
        ],
        "runs": runs,
        "loadavg_end": os.getloadavg(),
    }


def scale_summary(report: dict) -> str:
    m = report["pairs_per_s"]
    lines = [
        f"{report['pairs']} pairs ({report['queries']} queries, {report['shards']} shards), {report['model']}",
        f"{'':<52}{'pairs/s':>9}",
        f"{'CrossEncoder.predict (batch 32)':<52}{m['predict']:>9.0f}",
        f"{'CrossEncoder.predict as a script (own process)':<52}{m['predict_script']:>9.0f}",
        f"{'jobs.rerank, scoring stage only':<52}{m['rerank_scoring']:>9.0f}",
        f"{'jobs.rerank, end to end (start-up, ranking, writing)':<52}{m['rerank_end_to_end']:>9.0f}",
        f"{'jobs.rerank, end to end on a running Ray instance':<52}{m['rerank_on_cluster']:>9.0f}",
        f"end to end / predict: {report['ratio_end_to_end_vs_predict']:.2f}x "
        f"(on a running instance: {report['ratio_on_cluster_vs_predict']:.2f}x; "
        f"end to end / predict as a script: {report['ratio_end_to_end_vs_predict_script']:.2f}x)",
    ]
    return "\n".join(lines)


def simulated_worker(seconds_per_token: float) -> type:
    """A `RerankWorker` whose forward sleeps `seconds_per_token` x padded tokens and returns zeros; its
    model is loaded without weights (preprocessing and collating stay real)."""

    class SimulatedAccelerator(RerankWorker):
        def load_model(self, spec):
            return load_cross_encoder(spec, weights=False)

        def forward(self, features: dict) -> np.ndarray:
            ids = features["input_ids"]
            time.sleep(ids.numel() * seconds_per_token)
            return np.zeros(ids.shape[0], dtype=np.float32)

    return SimulatedAccelerator


def mean_tokens(model: str, table: pa.Table) -> float:
    from actors.reranker.features import Featurizer

    encoder = load_cross_encoder(RerankerSpec(model=model), weights=False)
    features, _ = Featurizer(encoder, None)(text_pairs(table.slice(0, SAMPLE_PAIRS)))
    return float(np.mean([f.tokens for f in features if f is not None]))


def run_simulation(cfg, model: str, rates: list[float]) -> dict:
    """`--simulate-rates`: one pipeline run per rate on `cfg.num_pairs` pairs. Assumes `ray.init`."""
    from pipelines.rerank.run import run_rerank

    table = skewed_pairs(cfg.num_pairs, cfg.per_query, cfg.lengths, cfg.seed)
    tokens = mean_tokens(model, table)
    root = cfg.work_dir or tempfile.mkdtemp(prefix="rerank-simulate-")
    pairs = write_shards(table, os.path.join(root, "pairs"), cfg.shards, cfg.row_group_rows)
    results = {}
    try:
        for rate in rates:
            out = os.path.join(root, f"run-{rate:g}")
            rcfg = replace(cfg.rerank_config(), pairs=pairs, output=out)
            started = time.perf_counter()
            manifest = run_rerank(rcfg, worker_cls=simulated_worker(1.0 / (rate * tokens)))
            actor = manifest["scoring_actor"]
            results[f"{rate:g}"] = {
                "busy": actor["forward_busy"],
                "forward_window_s": actor["forward_window_s"],
                "collate_s": actor["collate_s"],
                "write_back_s": actor["write_back_s"],
                "padding_efficiency": manifest["tokens"]["padding_efficiency"],
                "wall_s": time.perf_counter() - started,
            }
            shutil.rmtree(out, ignore_errors=True)
            print(f"[benchmark] simulated {rate:g} pairs/s: busy {actor['forward_busy']:.3f}", flush=True)
    finally:
        if cfg.work_dir is None:
            shutil.rmtree(root, ignore_errors=True)
    return {
        "mode": "simulate",
        "pairs": table.num_rows,
        "mean_tokens_per_pair": tokens,
        "model": model,
        "pool": cfg.rerank_config().pool.__dict__,
        "rates": results,
        "loadavg_end": os.getloadavg(),
    }


def simulation_summary(report: dict) -> str:
    lines = [
        f"simulated accelerator, {report['pairs']} pairs, {report['mean_tokens_per_pair']:.0f} tokens/pair",
        f"{'pairs/s':>10}{'busy':>8}{'collate s':>11}{'write s':>9}{'padding':>9}",
    ]
    for rate, r in report["rates"].items():
        lines.append(
            f"{rate:>10}{r['busy']:>8.3f}{r['collate_s']:>11.2f}{r['write_back_s']:>9.2f}{r['padding_efficiency']:>9.3f}"
        )
    return "\n".join(lines)
