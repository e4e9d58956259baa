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
from typing import TYPE_CHECKING

from jobs.cli import SettingsParser, user_error
from jobs.loopback import keep_local_ray_on_loopback

if TYPE_CHECKING:
    from jobs.bench.run import BenchConfig


GROUPS = {
    "input/output": ("demo_dir", "work_dir", "output"),
    "benchmark set": ("num_pairs", "per_query", "pair_tokens", "seed"),
    "what is timed": ("model_config", "rounds", "fast_paths", "fast_path_pairs", "peak_tflops", "sweep"),
    "scale and simulation": (
        "scale",
        "simulate_rates",
        "shards",
        "row_group_rows",
        "tiny_width",
        "tiny_layers",
    ),
}
EXAMPLES = (
    "python -m jobs.benchmark                  # CPU, the SmolLM2 demo reranker",
    "python -m jobs.benchmark --device cuda --dtype bfloat16 --model-config qwen3-0.6b --pair-tokens 512",
)


def build_parser() -> SettingsParser:
    from jobs.bench.run import BenchConfig

    return SettingsParser(
        BenchConfig,
        groups=GROUPS,
        examples=EXAMPLES,
        prog="python -m jobs.benchmark",
        description="Measure pipeline throughput against a per-query rank loop, predict and the bare forward, "
        "side by side in one run, and write the figures as JSON.",
    )


def resolve_model(cfg: BenchConfig) -> str:
    """--model as given, else the SmolLM2 demo reranker, or (--model-config) a random-weight reranker of a
    published shape tokenised like it."""
    from jobs.bench.run import DEMO_RERANKER

    if cfg.reranker.model != DEMO_RERANKER:
        return cfg.reranker.model
    from jobs.demo_assets import build_demo

    if (cfg.scale or cfg.simulate_rates) and not cfg.model_config:
        from jobs.demo_assets.tiny_lm import build_tiny_reranker

        name = f"tiny-llama-h{cfg.tiny_width}-l{cfg.tiny_layers}-reranker"
        out = os.path.join(cfg.demo_dir, "models", name)
        return str(build_tiny_reranker(out, hidden_size=cfg.tiny_width, layers=cfg.tiny_layers))
    demo = build_demo(cfg.demo_dir).reranker
    config = cfg.model_config
    if not config:
        return demo
    from jobs.bench.models import build_random_reranker

    on_cpu = cfg.reranker.dtype in ("auto", "float32") and cfg.reranker.device != "cuda"
    out = os.path.join(cfg.demo_dir, "models", f"random-{config}")
    return str(
        build_random_reranker(config, out, tokenizer_from=demo, dtype="float32" if on_cpu else "bfloat16")
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


def starts_local_ray(argv: list[str]) -> bool:
    """Whether this run starts its own Ray instance (no --ray-address, no RAY_ADDRESS), read from the
    command line before anything imports Ray."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--ray-address")
    known, _ = pre.parse_known_args(argv)
    return not known.ray_address and not os.environ.get("RAY_ADDRESS")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    local = starts_local_ray(argv)
    if local and "ray" not in sys.modules:
        keep_local_ray_on_loopback()  # its instance and the jobs --scale starts: loopback only
    parser = build_parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        cfg = parser.config(args).validate()
        cfg = cfg.resolved(resolve_model(cfg)).validate()
        sweep = None
        if cfg.sweep:
            from jobs.bench.sweep import parse_sweep

            sweep = parse_sweep(cfg.sweep)
    except (ValueError, FileNotFoundError) as exc:
        return user_error(parser, exc)
    from jobs.bench.run import run_benchmark
    from jobs.bench.scale import parse_rates
    from jobs.ray_session import connect

    if cfg.scale:  # jobs.rerank starts its own Ray instance, as a user's run would
        from jobs.bench.scale import run_scale, scale_summary

        return _write(
            run_scale(cfg, cfg.reranker.model), cfg.output, cfg.reranker.model, "scale", scale_summary
        )

    if local:
        # Ray starts its workers at nice 15. On a machine shared with other work that hands the pipeline's
        # actors less CPU than this process, where (a)-(c) run; at equal priority the comparison is like for
        # like, as on a dedicated node where niceness changes nothing. Only the local instance started here.
        os.environ.setdefault("RAY_worker_niceness", str(os.nice(0)))
    connect(args.ray_address, args.progress_interval)
    model = cfg.reranker.model
    if cfg.simulate_rates:
        from jobs.bench.scale import run_simulation, simulation_summary

        report = run_simulation(cfg, model, parse_rates(cfg.simulate_rates))
        return _write(report, cfg.output, model, "simulate", simulation_summary)
    if sweep is not None:
        from jobs.bench.sweep import run_sweep

        report = run_sweep(cfg, *sweep)
        device = "cpu" if cfg.on_cpu else "cuda"
        output = cfg.output or default_output(model, device, f"sweep-{sweep[0]}")
        text = sweep_summary(report)
    else:
        report = run_benchmark(cfg)
        output = cfg.output or default_output(model, report["machine"]["device"])
        text = summary(report)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as f:
        json.dump(report, f, indent=2, default=str)
    print(text)
    print(f"report: {output}")
    return 0


def _write(report: dict, output: str | None, model: str, kind: str, summarize) -> int:
    output = output or default_output(model, "cpu", kind)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as f:
        json.dump(report, f, indent=2, default=str)
    print(summarize(report))
    print(f"report: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
