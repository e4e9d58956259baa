"""Sweep one setting of the scoring path and time each value side by side, interleaved over rounds.

`batch_tokens` and `min_fill` change only the micro-batches, so they are timed on the bare forward (c);
`block_rows` and `actors` change how Ray feeds the actors, so they are timed on the pipeline (d). With
several actors on one machine the cores are split between them (torch threads = cores / actors).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile

import numpy as np
import pyarrow.parquet as pq

from actors.reranker.worker import PACK_MIN_FILL, load_cross_encoder
from jobs.bench import methods as bm
from jobs.bench.data import skewed_pairs
from jobs.bench.run import BenchConfig
from pipelines.runs.info import library_versions

SWEEPABLE = {
    "batch_tokens": "bare_forward",
    "min_fill": "bare_forward",
    "block_rows": "pipeline",
    "actors": "pipeline",
}


def parse_sweep(text: str) -> tuple[str, list[float]]:
    """'batch_tokens=1024,4096' -> ('batch_tokens', [1024, 4096])."""
    name, _, values = text.partition("=")
    name = name.strip().replace("-", "_")
    if name not in SWEEPABLE or not values:
        raise ValueError(f"--sweep {text!r}: expected NAME=V1,V2,... with NAME one of {', '.join(SWEEPABLE)}")
    cast = float if name == "min_fill" else int
    return name, [cast(v) for v in values.split(",")]


def run_sweep(cfg: BenchConfig, name: str, values: list) -> dict:
    """Median seconds, pairs/s and padding efficiency per value of `name`; assumes `ray.init` for the
    pipeline settings."""
    import torch

    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model = load_cross_encoder(cfg.spec())
    prompt = (
        cfg.reranker.prompt
        if cfg.reranker.prompt is not None
        else model.prompts.get(model.default_prompt_name or "")
    )
    table = skewed_pairs(cfg.num_pairs, cfg.per_query, cfg.lengths, cfg.seed)
    work = bm.Workload.build(table, model, prompt, cfg.reranker.batch_tokens, cfg.pool.block_rows)
    runs: dict = {v: [] for v in values}
    root = cfg.work_dir or tempfile.mkdtemp(prefix="rerank-sweep-")
    try:
        if SWEEPABLE[name] == "bare_forward":
            variants = {}
            for v in values:
                tokens = int(v) if name == "batch_tokens" else cfg.reranker.batch_tokens
                fill = float(v) if name == "min_fill" else PACK_MIN_FILL
                packed = work.repacked(tokens, cfg.pool.block_rows, fill)
                variants[v] = (packed, bm.tokenise_micro_batches(model, packed, prompt))
            bm.bare_forward(model, work, variants[values[0]][1][:1])  # warm-up
            call = {v: (lambda v=v: bm.bare_forward(model, variants[v][0], variants[v][1])) for v in values}
        else:
            pairs_dir = os.path.join(root, "pairs")
            os.makedirs(pairs_dir, exist_ok=True)
            pq.write_table(table, os.path.join(pairs_dir, "part-0.parquet"))
            call = {v: (lambda v=v: _pipeline_with(cfg, work, pairs_dir, root, name, v)) for v in values}
        for r in range(cfg.rounds):
            for v in values[r % len(values) :] + values[: r % len(values)]:
                runs[v].append(call[v]())
                print(
                    f"[sweep] round {r + 1}/{cfg.rounds} {name}={v}: {runs[v][-1].seconds:.2f} s", flush=True
                )
    finally:
        if cfg.work_dir is None:
            shutil.rmtree(root, ignore_errors=True)
    real = int(work.lengths.sum())
    results = {}
    for v, timed in runs.items():
        seconds = float(np.median([t.seconds for t in timed]))
        results[str(v)] = {
            "seconds_median": seconds,
            "seconds_rounds": [t.seconds for t in timed],
            "pairs_per_s": len(work.pairs) / seconds,
            "real_tokens_per_s": real / seconds,
            "padding_efficiency": real / timed[0].padded_tokens,
        }
    best = max(r["pairs_per_s"] for r in results.values())
    for r in results.values():
        r["relative_to_best"] = r["pairs_per_s"] / best
    return {
        "sweep": name,
        "timed": SWEEPABLE[name],
        "results": results,
        "settings": dataclasses.asdict(cfg),
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "loadavg": os.getloadavg(),
        },
        "versions": library_versions(),
    }


def _pipeline_with(
    cfg: BenchConfig, work: bm.Workload, pairs_dir: str, root: str, name: str, value
) -> bm.Timed:
    rcfg = cfg.rerank_config()
    if name == "actors":
        cores = os.cpu_count() or 1
        pool = rcfg.pool
        on_gpu = bool(pool.gpus_per_actor)
        pool = dataclasses.replace(
            pool,
            actors=int(value),
            torch_threads=None if on_gpu else max(1, cores // int(value)),
            # leave a core to Ray's read and write tasks, or the actors starve them
            cpus_per_actor=pool.cpus_per_actor
            if on_gpu
            else min(pool.cpus_per_actor, max(cores - 1, 1) / int(value)),
        )
    else:
        pool = dataclasses.replace(rcfg.pool, block_rows=int(value))
    rcfg = dataclasses.replace(rcfg, pool=pool)
    out = os.path.join(root, f"pipeline-{name}-{value}")
    try:
        return bm.pipeline(rcfg, work, pairs_dir, out)
    finally:
        shutil.rmtree(out, ignore_errors=True)
