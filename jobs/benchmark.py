"""`python -m jobs.benchmark`: how fast the rerank pipeline scores, against what a user would write by hand.

Scores one pairs set (real text, skewed lengths: many short documents, a long tail) four ways, interleaved
over rounds: (a) a per-query `CrossEncoder.rank` loop, (b) `CrossEncoder.predict` over all pairs, (c) the
bare model forward over the pipeline's own micro-batches, (d) the pipeline end to end on Ray. Prints
pairs/s, real tokens/s, padding efficiency and the ratios d/a, d/b, d/c, and writes them as JSON with the
machine, versions and settings. Runs locally (starts a Ray instance) or under
`ray job submit --working-dir . -- python -m jobs.benchmark ...`.

    python -m jobs.benchmark                                    # CPU, the SmolLM2 demo reranker
    python -m jobs.benchmark --device cuda --dtype bfloat16 --model-config qwen3-0.6b --pair-tokens 512
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from jobs.bench.data import LengthSpec
from jobs.bench.models import MODEL_CONFIGS
from jobs.bench.run import BenchConfig
from jobs.rerank import add_fast_path_flags
from pipelines.rerank import RerankConfig

# On a GPU the set must be large enough to keep it busy for a while; CPU defaults live on BenchConfig.
GPU_PAIRS, GPU_FAST_PATH_PAIRS = 16384, 2048


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jobs.benchmark",
        description="Measure pipeline throughput against a per-query rank loop, predict and the bare forward, "
        "side by side in one run, and write the figures as JSON.",
    )
    m = p.add_argument_group("model")
    m.add_argument(
        "--model",
        default=None,
        help="CrossEncoder directory or hub id (default: the SmolLM2-135M demo reranker, built under "
        "--demo-dir if missing)",
    )
    m.add_argument(
        "--model-config",
        choices=sorted(MODEL_CONFIGS),
        default=None,
        help="instead of --model, a random-weight reranker with this published shape (qwen3-0.6b = "
        "Qwen3-Reranker-0.6B: hidden 1024, 28 layers, 16/8 heads, head_dim 128, MLP 3072, vocab 151669), "
        "tokenised like the demo reranker; its speed is the real model's, its scores mean nothing",
    )
    m.add_argument("--demo-dir", default=".demo", help="where the demo reranker is built or found")
    d = p.add_argument_group("pairs")
    d.add_argument(
        "--pairs",
        type=int,
        default=None,
        help=f"pairs in the benchmark set (default: {BenchConfig.pairs} on CPU, {GPU_PAIRS} on GPU)",
    )
    d.add_argument("--per-query", type=int, default=BenchConfig.per_query, help="candidates per query")
    d.add_argument(
        "--pair-tokens",
        type=int,
        default=None,
        help="make every pair exactly N tokens (e.g. 512 for the GPU roofline figure) instead of skewed lengths",
    )
    d.add_argument(
        "--median-words", type=float, default=LengthSpec.median_words, help="median document length, words"
    )
    d.add_argument(
        "--sigma", type=float, default=LengthSpec.sigma, help="lognormal shape of document lengths"
    )
    d.add_argument("--max-words", type=int, default=LengthSpec.max_words, help="longest document, words")
    d.add_argument("--seed", type=int, default=0, help="seed of the pairs set")
    r = p.add_argument_group("run")
    r.add_argument(
        "--rounds", type=int, default=BenchConfig.rounds, help="rounds; every method runs once per round"
    )
    r.add_argument("--prompt", default=None, help="instruction passed as the prompt (default: the model's)")
    r.add_argument("--max-length", type=int, default=None, help="truncate pairs to N tokens")
    r.add_argument(
        "--batch-tokens", type=int, default=RerankConfig.batch_tokens, help="micro-batch token budget"
    )
    r.add_argument("--block-rows", type=int, default=RerankConfig.block_rows, help="rows per actor call")
    r.add_argument("--actors", type=int, default=RerankConfig.actors, help="scoring actors in the pipeline")
    r.add_argument("--cpus-per-actor", type=float, default=RerankConfig.cpus_per_actor, help="CPUs per actor")
    r.add_argument("--gpus-per-actor", type=float, default=None, help="GPUs per actor (default: 1 with GPUs)")
    r.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="torch threads, driver and actors (default: all cores on CPU)",
    )
    r.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    r.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16", "float16"],
        default="auto",
        help="weights dtype (auto: bfloat16 on GPU, float32 on CPU)",
    )
    r.add_argument(
        "--no-fast-paths",
        dest="fast_paths",
        action="store_false",
        help="skip timing each exact fast path against the default path",
    )
    r.add_argument(
        "--fast-path-pairs",
        type=int,
        default=None,
        help=f"pairs each fast path is timed on (default: {BenchConfig.fast_path_pairs} on CPU, "
        f"{GPU_FAST_PATH_PAIRS} on GPU)",
    )
    r.add_argument(
        "--peak-tflops", type=float, default=None, help="accelerator peak for MFU (default: by GPU name)"
    )
    r.add_argument(
        "--work-dir", default=None, help="pairs Parquet and pipeline outputs (default: a temp dir)"
    )
    r.add_argument(
        "--output",
        default=None,
        help="JSON report path (default: bench/benchmark-<model>-<device>-<time>.json)",
    )
    r.add_argument(
        "--ray-address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local one)"
    )
    r.add_argument(
        "--sweep",
        default=None,
        metavar="NAME=V1,V2,...",
        help="instead of the comparison, time one setting's values side by side: batch_tokens or min_fill "
        "(on the bare forward), block_rows or actors (on the pipeline); e.g. batch_tokens=2048,4096,16384",
    )
    add_fast_path_flags(p)
    return p


def resolve_model(args: argparse.Namespace) -> str:
    if args.model and args.model_config:
        raise ValueError("pass --model or --model-config, not both")
    if args.model:
        return args.model
    from jobs.demo_assets import build_demo

    demo = build_demo(args.demo_dir).reranker
    if not args.model_config:
        return demo
    from jobs.bench.models import build_random_reranker

    dtype = "float32" if args.dtype in ("auto", "float32") and args.device != "cuda" else "bfloat16"
    out = os.path.join(args.demo_dir, "models", f"random-{args.model_config}")
    return str(build_random_reranker(args.model_config, out, tokenizer_from=demo, dtype=dtype))


def config_from_args(args: argparse.Namespace, model: str) -> BenchConfig:
    import torch

    on_gpu = args.device == "cuda" or (args.device is None and torch.cuda.is_available())
    pairs = args.pairs or (GPU_PAIRS if on_gpu else BenchConfig.pairs)
    fast_path_pairs = args.fast_path_pairs or (GPU_FAST_PATH_PAIRS if on_gpu else BenchConfig.fast_path_pairs)
    return BenchConfig(
        model=model,
        pairs=pairs,
        per_query=args.per_query,
        pair_tokens=args.pair_tokens,
        lengths=LengthSpec(median_words=args.median_words, sigma=args.sigma, max_words=args.max_words),
        rounds=args.rounds,
        seed=args.seed,
        prompt=args.prompt,
        max_length=args.max_length,
        batch_tokens=args.batch_tokens,
        block_rows=args.block_rows,
        actors=args.actors,
        cpus_per_actor=args.cpus_per_actor,
        gpus_per_actor=args.gpus_per_actor,
        torch_threads=args.torch_threads,
        device=args.device,
        dtype=args.dtype,
        score_path=args.score_path,
        fp32_head=args.fp32_head,
        prefix_reuse=args.prefix_reuse,
        attn_implementation=args.attn_implementation,
        fast_paths=args.fast_paths,
        fast_path_pairs=fast_path_pairs,
        peak_tflops=args.peak_tflops,
        work_dir=args.work_dir,
    )


def summary(report: dict) -> str:
    lines = [f"{'method':<14}{'pairs/s':>10}{'tokens/s':>11}{'padding':>9}{'max|Δ| vs predict':>19}"]
    for name, m in report["methods"].items():
        lines.append(
            f"{name:<14}{m['pairs_per_s']:>10.2f}{m['real_tokens_per_s']:>11.0f}"
            f"{m['padding_efficiency']:>9.3f}{m['max_abs_diff_vs_predict']:>19.2e}"
        )
    pipe = report["methods"]["pipeline"]
    lines.append(
        f"pipeline pairs/s: steady {pipe['pairs_per_s_steady']:.2f}, excluding start-up "
        f"{pipe['pairs_per_s_excl_startup']:.2f}, including start-up {pipe['pairs_per_s_incl_startup']:.2f} "
        f"(start-up {pipe['startup_s_median']:.1f} s)"
    )
    for label, key in (
        ("ratios (steady, medians)", "ratios"),
        ("ratios (steady, best rounds)", "ratios_best_of_rounds"),
        ("ratios (CPU time)", "ratios_cpu_time"),
    ):
        pretty = ", ".join(f"{k.removeprefix('pipeline_vs_')} {v:.2f}x" for k, v in report[key].items())
        lines.append(f"{label}: {pretty}")
    if report["machine"]["device"] == "cpu":
        lines.append(
            "CPU targets: "
            + ", ".join(
                f"{k} {t['value']:.2f} (>= {t['target']}: {'met' if t['met'] else 'MISSED'})"
                for k, t in report["cpu_targets"].items()
            )
        )
    mfu = pipe.get("mfu")
    if mfu is not None:
        lines.append(f"MFU: pipeline {mfu:.1%}, bare forward {report['methods']['bare_forward']['mfu']:.1%}")
    for name, f in report["fast_paths"].items():
        lines.append(
            f"fast path {name:<20} {f['pairs_per_s']:>8.2f} pairs/s  x{f['speedup_vs_default']:.2f} vs default "
            f"(CPU time x{f['cpu_speedup_vs_default']:.2f})  "
            f"max|Δ| {f['max_abs_diff_vs_predict']:.1e}  ties {f['ties']}  ({f['mean_tokens_per_pair']:.0f} tok/pair)"
        )
    return "\n".join(lines)


def sweep_summary(report: dict) -> str:
    lines = [
        f"{report['sweep']:<14}{'pairs/s':>10}{'tokens/s':>11}{'padding':>9}{'vs best':>9}   ({report['timed']})"
    ]
    for value, r in report["results"].items():
        lines.append(
            f"{value:<14}{r['pairs_per_s']:>10.2f}{r['real_tokens_per_s']:>11.0f}"
            f"{r['padding_efficiency']:>9.3f}{r['relative_to_best']:>9.2f}"
        )
    return "\n".join(lines)


def default_output(model: str, device: str, kind: str = "benchmark") -> str:
    name = os.path.basename(os.path.normpath(model)) or "model"
    return os.path.join("bench", f"{kind}-{name}-{device}-{time.strftime('%Y%m%dT%H%M%S')}.json")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        model = resolve_model(args)
        cfg = config_from_args(args, model).validate()
        sweep = None
        if args.sweep:
            from jobs.bench.sweep import parse_sweep

            sweep = parse_sweep(args.sweep)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from jobs.bench.run import run_benchmark
    from jobs.ray_session import connect

    if args.ray_address is None and "RAY_ADDRESS" not in os.environ:
        # Ray starts its workers at nice 15. On a machine shared with other work that hands the pipeline's
        # actors less CPU than this process, where (a)-(c) run; at equal priority the comparison is like for
        # like, as on a dedicated node where niceness changes nothing. Only the local instance started here.
        os.environ.setdefault("RAY_worker_niceness", str(os.nice(0)))
    connect(args.ray_address)
    if sweep is not None:
        from jobs.bench.sweep import run_sweep

        report = run_sweep(cfg, *sweep)
        device = "cuda" if cfg.rerank_config().gpus_per_actor != 0.0 else "cpu"
        output = args.output or default_output(model, device, f"sweep-{sweep[0]}")
        text = sweep_summary(report)
    else:
        report = run_benchmark(cfg)
        output = args.output or default_output(model, report["machine"]["device"])
        text = summary(report)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as f:
        json.dump(report, f, indent=2, default=str)
    print(text)
    print(f"report: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
