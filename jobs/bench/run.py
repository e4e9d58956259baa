"""Throughput benchmark: the same pairs scored four ways, interleaved over rounds, medians compared.

(a) per-query `CrossEncoder.rank` loop, (b) `CrossEncoder.predict` over all pairs, (c) the bare model
forward over the pipeline's own micro-batches, (d) the rerank pipeline end to end on Ray; plus, optionally,
each exact fast path run in-process by the pipeline's worker against the default path. Machines are noisy,
so every round runs every method (in a rotated order) and the report uses per-method medians; ratios of
medians measured in one run are the figures to trust, absolute times only on a dedicated GPU.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import pyarrow.parquet as pq

from actors.model_spec import resolve_device_and_dtype
from actors.pool import PoolSpec
from actors.reranker.fast_paths import apply_fast_paths
from actors.reranker.spec import RerankerSpec
from actors.reranker.worker import load_cross_encoder
from jobs.bench import methods as bm
from jobs.bench import scale
from jobs.bench.data import (
    LengthSpec,
    fit_documents_to_tokens,
    skewed_pairs,
)
from jobs.bench.fast_path_runs import fast_path_report, fast_path_variants, median, ties
from jobs.bench.models import MODEL_CONFIGS, flops_per_pair, peak_tflops
from pipelines.rerank.config import RerankConfig
from pipelines.runs.info import library_versions
from schemas import columns as c
from schemas.settings import SettingError, at_least, setting, validate_nested

METHODS = ("rank_loop", "predict", "bare_forward", "pipeline")
TARGETS = {"padding_efficiency": 0.95, "pipeline_vs_bare_forward": 0.9, "pipeline_vs_rank_loop": 1.5}


DEMO_RERANKER = "demo"  # --model default: the SmolLM2-135M demo reranker, built under --demo-dir if missing
GPU_PAIRS, GPU_FAST_PATH_PAIRS = 16384, 2048  # a set large enough to keep a GPU busy for a while
CPU_PAIRS, CPU_FAST_PATH_PAIRS = 160, 32  # 10 queries x 16: three rounds in ~10 min on 2 cores (SmolLM2)


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    """One benchmark run; `jobs.benchmark` generates one flag per field (the reranker and pool as in
    `jobs.rerank`)."""

    reranker: RerankerSpec = setting(
        default_factory=lambda: RerankerSpec(model=DEMO_RERANKER),
        help="reranker (the score path (c) and (d) use; (a) and (b) are always the library's own)",
    )
    pool: PoolSpec = setting(
        default_factory=PoolSpec,
        help="pipeline actor pool (on CPU, each actor's torch threads default to the cores shared out among "
        "the actors; (a)-(c) always use every core)",
    )
    model_config: str | None = setting(
        None,
        choices=tuple(MODEL_CONFIGS),
        help="instead of --model, a random-weight reranker with this published shape (qwen3-0.6b = "
        "Qwen3-Reranker-0.6B: hidden 1024, 28 layers, 16/8 heads, head_dim 128, MLP 3072, vocab 151669), "
        "tokenised like the demo reranker; its speed is the real model's, its scores mean nothing",
    )
    demo_dir: str = setting(".demo", help="where the demo reranker is built or found")
    num_pairs: int | None = setting(
        None, help=f"pairs in the benchmark set (default: {CPU_PAIRS} on CPU, {GPU_PAIRS} on GPU)"
    )
    per_query: int = setting(16, help="candidates per query")
    pair_tokens: int | None = setting(
        None,
        help="make every pair exactly N tokens (e.g. 512 for the GPU roofline) instead of skewed lengths",
    )
    lengths: LengthSpec = setting(default_factory=LengthSpec, help="document lengths (skewed, lognormal)")
    rounds: int = setting(3, help="rounds; every method runs once per round, medians over rounds")
    seed: int = setting(0, help="seed of the pairs set")
    fast_paths: bool = setting(True, help="also time each exact fast path against the default path")
    fast_path_pairs: int | None = setting(
        None,
        help=f"pairs each fast path is timed on (default: {CPU_FAST_PATH_PAIRS} on CPU, "
        f"{GPU_FAST_PATH_PAIRS} on GPU)",
    )
    peak_tflops: float | None = setting(
        None, help="accelerator peak for MFU (default: the datasheet figure for the GPU's name)"
    )
    work_dir: str | None = setting(None, help="pairs Parquet and pipeline outputs (default: a temp dir)")
    output: str | None = setting(
        None, metavar="FILE", help="JSON report path (default: bench/benchmark-<model>-<device>-<time>.json)"
    )
    scale: int | None = setting(
        None, metavar="N", help="instead: N pairs by CrossEncoder.predict vs python -m jobs.rerank (scale.py)"
    )
    shards: int = setting(8, help="Parquet files the --scale and --simulate-rates pairs are written as")
    row_group_rows: int | None = setting(
        None, help="rows per Parquet row group of those files (default: one row group a file)"
    )
    tiny_width: int = setting(
        64,
        help="width of the tiny random Llama reranker --scale and --simulate-rates build when no --model is "
        "given (64 with --tiny-layers 2: the tests' model, the one issue 11's comparison was measured on; "
        "32 with 1 layer: a forward as cheap as it gets next to the same CPU work)",
    )
    tiny_layers: int = setting(2, help="layers of that tiny reranker")
    simulate_rates: str | None = setting(
        None, metavar="R1,R2,...", help="instead: a simulated accelerator at these pairs/s (scale.py)"
    )
    sweep: str | None = setting(
        None,
        metavar="NAME=V1,V2,...",
        help="instead of the comparison, time one setting's values side by side: batch_tokens or min_fill "
        "(on the bare forward), block_rows or actors (on the pipeline); e.g. batch_tokens=2048,4096,16384",
    )

    def validate(self) -> BenchConfig:
        at_least(self, 2, "num_pairs", "fast_path_pairs")
        at_least(
            self, 1, "rounds", "per_query", "pair_tokens", "scale", "shards", "row_group_rows", "tiny_layers"
        )
        if self.tiny_width < 8 or self.tiny_width % 8:
            raise SettingError(
                "tiny_width", f"must be a multiple of 8 (4 heads of an even width), got {self.tiny_width}"
            )
        if sum(x is not None for x in (self.scale, self.simulate_rates, self.sweep)) > 1:
            raise SettingError("scale", "pass one of --scale, --simulate-rates, --sweep")
        scale.parse_rates(self.simulate_rates)
        if self.model_config is not None and self.reranker.model != DEMO_RERANKER:
            raise SettingError("model_config", "pass --model or --model-config, not both")
        if self.reranker.model != DEMO_RERANKER:
            validate_nested(self)
        else:
            self.pool.validate()
            self.lengths.validate()
        return self

    @property
    def on_cpu(self) -> bool:
        device = self.reranker.device
        return device == "cpu" or (device is None and not _cuda_available())

    def resolved(self, model: str) -> BenchConfig:
        """This config with `model` as the reranker and the per-device defaults filled in."""
        return replace(
            self,
            reranker=replace(self.reranker, model=model),
            num_pairs=self.num_pairs or (CPU_PAIRS if self.on_cpu else GPU_PAIRS),
            fast_path_pairs=self.fast_path_pairs
            or (CPU_FAST_PATH_PAIRS if self.on_cpu else GPU_FAST_PATH_PAIRS),
        )

    def spec(self, **fast) -> RerankerSpec:
        return replace(self.reranker, **fast)

    @property
    def threads(self) -> int | None:
        """torch threads of (a)-(c), in the driver: every core on CPU, as a user's own loop would run."""
        return os.cpu_count() if self.on_cpu else None

    @property
    def actor_threads(self) -> int | None:
        """Each pipeline actor's: --torch-threads, else on CPU the cores shared out among the actors."""
        if self.pool.torch_threads or not self.on_cpu:
            return self.pool.torch_threads
        return max(1, (os.cpu_count() or 1) // self.pool.actors)

    def rerank_config(self) -> RerankConfig:
        pool = replace(
            self.pool,
            gpus_per_actor=0.0 if self.on_cpu else self.pool.gpus_per_actor,
            torch_threads=self.actor_threads,
        )
        return RerankConfig(pairs="", output="", reranker=self.reranker, pool=pool)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def run_benchmark(cfg: BenchConfig) -> dict:
    """Run every method `cfg.rounds` times, interleaved; return the report (README, Throughput).
    Assumes `ray.init` was called (the pipeline method needs a cluster)."""
    import torch

    cfg.validate()
    load_start = os.getloadavg()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    plain = load_cross_encoder(cfg.spec(score_path="logit", fp32_head=False, prefix_reuse=False))
    prompt = (
        cfg.reranker.prompt
        if cfg.reranker.prompt is not None
        else plain.prompts.get(plain.default_prompt_name or "")
    )
    table = skewed_pairs(cfg.num_pairs, cfg.per_query, cfg.lengths, cfg.seed)
    if cfg.pair_tokens:
        table = fit_documents_to_tokens(table, plain, cfg.pair_tokens)
    work = bm.Workload.build(table, plain, prompt, cfg.reranker.batch_tokens, cfg.pool.block_rows)
    fast = plain
    if (cfg.reranker.score_path, cfg.reranker.fp32_head) != ("logit", False):
        fast = apply_fast_paths(
            load_cross_encoder(cfg.spec()), cfg.reranker.score_path, cfg.reranker.fp32_head
        )
    prepared = bm.tokenise_micro_batches(fast, work, prompt)

    root = cfg.work_dir or tempfile.mkdtemp(prefix="rerank-bench-")
    pairs_dir = os.path.join(root, "pairs")
    os.makedirs(pairs_dir, exist_ok=True)
    pq.write_table(table, os.path.join(pairs_dir, "part-0.parquet"))
    variants = fast_path_variants(cfg, work) if cfg.fast_paths else {}

    plain.predict(work.pairs[:8], prompt=prompt)  # warm-up: first-call allocations and kernel selection
    bm.bare_forward(fast, work, prepared[:1])
    rcfg = cfg.rerank_config()
    runs: dict[str, list[bm.Timed]] = {name: [] for name in (*METHODS, *variants)}
    calls = {
        "rank_loop": lambda: bm.rank_loop(plain, work, prompt),
        "predict": lambda: bm.predict_all(plain, work, prompt),
        "bare_forward": lambda: bm.bare_forward(fast, work, prepared),
    }
    try:
        for r in range(cfg.rounds):
            order = list(METHODS[r % len(METHODS) :] + METHODS[: r % len(METHODS)]) + list(variants)
            for name in order:
                if name == "pipeline":
                    out = os.path.join(root, f"pipeline-{r}")
                    runs[name].append(bm.pipeline(rcfg, work, pairs_dir, out))
                    shutil.rmtree(out, ignore_errors=True)
                elif name in calls:
                    runs[name].append(calls[name]())
                else:
                    worker, sub = variants[name]
                    runs[name].append(bm.worker_variant(worker, sub))
                print(
                    f"[benchmark] round {r + 1}/{cfg.rounds} {name}: {runs[name][-1].seconds:.2f} s",
                    flush=True,
                )
    finally:
        if cfg.work_dir is None:
            shutil.rmtree(root, ignore_errors=True)
    report = _report(cfg, plain, work, runs, variants, prompt)
    report["machine"]["loadavg_start"], report["machine"]["loadavg_end"] = load_start, os.getloadavg()
    return report


def _summary(
    timed: list[bm.Timed], n_pairs: int, real_tokens: int, reference: np.ndarray, flops: float
) -> dict:
    seconds = median([t.seconds for t in timed])
    return {
        "seconds_median": seconds,
        "seconds_rounds": [t.seconds for t in timed],
        "cpu_seconds_rounds": [t.cpu_seconds for t in timed],
        "pairs_per_cpu_s": n_pairs / median([t.cpu_seconds for t in timed]),
        "pairs_per_s": n_pairs / seconds,
        "pairs_per_s_best": n_pairs / min(t.seconds for t in timed),
        "real_tokens_per_s": real_tokens / seconds,
        "padding_efficiency": real_tokens / timed[0].padded_tokens if timed[0].padded_tokens else None,
        "achieved_tflops": flops / seconds / 1e12,
        "max_abs_diff_vs_predict": float(max(np.nanmax(np.abs(t.scores - reference)) for t in timed)),
        "unscored": int(np.isnan(timed[0].scores).sum()),
    }


def _report(cfg: BenchConfig, plain, work: bm.Workload, runs: dict, variants: dict, prompt) -> dict:
    import torch

    device, dtype = resolve_device_and_dtype(cfg.spec())
    dtype_name = str(dtype).removeprefix("torch.")
    config = plain[0].model.config
    n, real = len(work.pairs), int(work.lengths.sum())
    flops = float(sum(flops_per_pair(config, int(t), cfg.reranker.score_path) for t in work.lengths))
    reference = runs["predict"][0].scores
    methods = {name: _summary(runs[name], n, real, reference, flops) for name in METHODS}
    pipe = methods["pipeline"]
    extras = [t.extra for t in runs["pipeline"]]
    for key in ("wall_s", "startup_s", "excl_startup_s", "scoring_span_s"):
        pipe[f"{key}_median"] = median([e[key] for e in extras])
    pipe["pairs_per_s_incl_startup"] = n / pipe["wall_s_median"]
    pipe["pairs_per_s_excl_startup"] = n / pipe["excl_startup_s_median"]
    pipe["pairs_per_s_steady"] = n / pipe["scoring_span_s_median"]
    pipe["pairs_per_s_basis"] = "steady: pairs / (last block end - first block start) inside the actors"
    pipe["blocks_per_actor_rounds"] = [e.get("blocks_per_actor") for e in extras]

    def ratios(key: str, other: str = "pairs_per_s") -> dict:
        d = pipe[key]
        return {f"pipeline_vs_{m}": d / methods[m][other] for m in ("rank_loop", "predict", "bare_forward")}

    gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") else None
    peak = cfg.peak_tflops or (peak_tflops(gpu, dtype_name) if gpu else None)
    for m in methods.values():
        m["mfu"] = m["achieved_tflops"] / peak if peak else None
    steady = ratios("pairs_per_s_steady")
    checks = {
        "padding_efficiency": pipe["padding_efficiency"],
        "pipeline_vs_bare_forward": steady["pipeline_vs_bare_forward"],
        "pipeline_vs_rank_loop": steady["pipeline_vs_rank_loop"],
    }
    lengths = work.lengths
    return {
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "actor_torch_threads": cfg.actor_threads,
            "driver_niceness": os.nice(0),
            "actor_niceness": sorted(
                {n for t in runs["pipeline"] for n in t.extra.get("actor_niceness", [])}
            ),
            "device": device,
            "gpu": gpu,
            "peak_tflops": peak,
        },
        "versions": library_versions(),
        "settings": {**_flat(cfg), "resolved_dtype": dtype_name, "resolved_prompt": prompt},
        "workload": {
            "pairs": n,
            "queries": len(work.queries),
            "real_tokens": real,
            "tokens_per_pair": {
                "min": int(lengths.min()),
                "median": float(np.median(lengths)),
                "mean": float(lengths.mean()),
                "p90": float(np.percentile(lengths, 90)),
                "max": int(lengths.max()),
            },
            "micro_batches": sum(len(b) for _, b in work.blocks),
            "flops_per_pair_mean": flops / n,
        },
        "methods": methods,
        "ratios": steady,
        "ratios_excl_startup": ratios("pairs_per_s_excl_startup"),
        "ratios_incl_startup": ratios("pairs_per_s_incl_startup"),
        "ratio_basis": "pipeline steady-state pairs/s over each method's pairs/s (medians of rounds)",
        "ratios_best_of_rounds": ratios("pairs_per_s_best", "pairs_per_s_best"),
        "ratios_best_of_rounds_basis": "the fastest round of each method: other load on a shared machine only "
        "ever slows a round down, so the best round is the least disturbed one",
        "ratios_cpu_time": {
            f"pipeline_vs_{m}": pipe["pairs_per_cpu_s"] / methods[m]["pairs_per_cpu_s"]
            for m in ("rank_loop", "predict", "bare_forward")
        },
        "ratios_cpu_time_basis": "pairs per CPU-second of the scoring process(es): the driver for a-c, the "
        "actors for d (Ray's own processes not counted); insensitive to other load on a shared machine",
        "cpu_targets": {
            k: {"value": v, "target": TARGETS[k], "met": bool(v >= TARGETS[k])} for k, v in checks.items()
        },
        "fast_paths": fast_path_report(runs, variants, plain, prompt),
        "ties": {"predict": ties(reference, work.table.column(c.QUERY_ID).to_pylist())},
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _flat(cfg: BenchConfig) -> dict:
    """The settings as one flat dict (reranker and pool fields at the top), for the report."""
    out = {k: v for k, v in asdict(cfg).items() if k not in ("reranker", "pool")}
    return {**asdict(cfg.reranker), **asdict(cfg.pool), **out}
