"""Scaling over nodes: `python -m jobs.bench.nodes`.

The simulated accelerator (`jobs.bench.scale.simulated_worker`: a scorer double whose forward sleeps per
padded token, releasing the GIL as a GPU kernel does) on one worker node, then on two, over the same pairs,
each run on a fresh local multi-node Ray cluster: a head node without CPUs (the driver's, as on a KubeRay
head) and `nodes` worker nodes with one CPU and one `accelerator` each, every process on 127.0.0.1
(`jobs.loopback`). The real pipeline runs (`pipelines.rerank.run.run_rerank`: reads, preprocess tasks,
collation, commits, ranking) with one scoring actor per node: each actor reserves `accelerator=1`
(`--actor-resources`) and no CPU, so the node's CPU stays with the read and preprocess tasks. Rounds
alternate 1, 2, 1, 2, ...; it prints pairs/s per round and the efficiency against linear,
(pairs/s on 2 nodes) / (2 x pairs/s on 1 node), median over rounds, on three bases:
- `steady` (the headline): pairs / the scoring actors' forward window (first forward to the end of the
  last, over every actor; the manifest's `scoring_actor`);
- `scoring`: pairs / the scoring stage (the manifest's `timings.score_s`: actor start-up, model load and
  the stage's tail included);
- `run`: pairs / the whole `run_rerank` call (planning, scoring, ranking, writing; not the cluster's start).

Every node is a process tree on this one machine, so the pairs and the output sit on a local disk every
node shares (the pipeline's shared-output probe passes for that reason), and every node's work shares the
machine's cores: it measures the pipeline's own scaling (scheduling, one actor per node, the driver), not a
network or storage.

    python -m jobs.bench.nodes --output jobs/bench/results/nodes-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

from jobs.loopback import cluster_head, keep_local_ray_on_loopback

NODE_COUNTS = (1, 2)
RESOURCE = "accelerator"  # the custom resource each worker node declares one of, and each actor reserves
OBJECT_STORE_BYTES = 128 * 1024 * 1024
BASES = ("steady", "scoring", "run")
GOAL = 0.9


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jobs.bench.nodes",
        description="A simulated accelerator on one worker node, then two, on the same pairs, each on a fresh "
        "local multi-node Ray cluster: pairs/s and the efficiency against linear scaling.",
    )
    p.add_argument(
        "--rate", type=float, default=200.0, help="pairs/s of each simulated accelerator (default: 200)"
    )
    p.add_argument("--num-pairs", type=int, default=10000, help="pairs in the set (default: 10000)")
    p.add_argument("--per-query", type=int, default=50, help="candidates per query (default: 50)")
    p.add_argument(
        "--shards", type=int, default=8, help="Parquet files the pairs are written as (default: 8)"
    )
    p.add_argument("--block-rows", type=int, default=500, help="rows per actor call (default: 500)")
    p.add_argument("--rounds", type=int, default=2, help="rounds of (1 node, 2 nodes) (default: 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the pairs set (default: 0)")
    p.add_argument("--model", default=None, help="reranker directory (default: the tiny Llama reranker)")
    p.add_argument("--demo-dir", default=".demo", help="where the tiny reranker is built or found")
    p.add_argument("--work-dir", default=None, help="pairs and outputs (default: a temp dir, removed after)")
    p.add_argument("--output", default=None, metavar="FILE", help="write the JSON report here")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name, least in (("num_pairs", 2), ("per_query", 1), ("shards", 1), ("block_rows", 1), ("rounds", 1)):
        if getattr(args, name) < least:
            parser.error(f"--{name.replace('_', '-')} must be >= {least}, got {getattr(args, name)}")
    if not args.rate > 0:
        parser.error(f"--rate must be > 0, got {args.rate}")
    return args


@contextmanager
def local_cluster(nodes: int) -> Iterator[tuple]:
    """A fresh `ray.cluster_utils.Cluster` on loopback: a head without CPUs and `nodes` worker nodes of one
    CPU and one `accelerator` each; yields (cluster, worker nodes), the list a caller that replaces nodes
    keeps current. Every node in it is stopped on the way out, errors included (not `Cluster.shutdown`,
    which also deletes the address file of any other Ray instance on the machine: the one this process
    finds there is put back by `jobs.loopback.cluster_head`)."""
    cluster = cluster_head(num_cpus=0, object_store_memory=OBJECT_STORE_BYTES, include_dashboard=False)
    workers = []
    try:
        for _ in range(nodes):
            workers.append(add_worker(cluster))
        deadline, alive = time.monotonic() + 60, []
        while time.monotonic() < deadline:
            alive = [n for n in cluster.global_state.node_table() if n["Alive"]]
            if len(alive) >= nodes + 1:
                break
            time.sleep(0.2)
        ips = {n["NodeManagerAddress"] for n in alive}
        if len(alive) < nodes + 1 or ips != {"127.0.0.1"}:
            raise RuntimeError(
                f"{len(alive)} of {nodes + 1} nodes alive, at {sorted(ips)}: not the loopback cluster"
            )
        yield cluster, workers
    finally:
        for node in workers:
            cluster.remove_node(node, allow_graceful=True)
        cluster.remove_node(cluster.head_node, allow_graceful=True)


def add_worker(cluster):
    """One more worker node: 1 CPU and one `accelerator`."""
    return cluster.add_node(
        num_cpus=1, resources={RESOURCE: 1}, object_store_memory=OBJECT_STORE_BYTES, include_dashboard=False
    )


def one_run(
    address: str, nodes: int, pairs: str, out: str, rows: int, args, model: str, tokens: float
) -> dict:
    """One `run_rerank` on a fresh cluster of `nodes` worker nodes, the driver joined to it; its figures."""
    import ray

    from actors.pool import PoolSpec
    from actors.reranker.spec import RerankerSpec
    from jobs.bench.scale import simulated_worker
    from jobs.ray_session import connect
    from pipelines.rerank.config import RerankConfig
    from pipelines.rerank.run import run_rerank

    pool = PoolSpec(
        actors=nodes,
        gpus_per_actor=0.0,
        cpus_per_actor=0.0,  # the node's one CPU stays with the read and preprocess tasks
        actor_resources=(f"{RESOURCE}=1",),  # one actor a node: each node declares one
        torch_threads=1,
        block_rows=args.block_rows,
    )
    cfg = RerankConfig(pairs=pairs, output=out, reranker=RerankerSpec(model=model, device="cpu"), pool=pool)
    connect(address, progress_interval=0)
    try:
        placed = {n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]}
        started = time.perf_counter()
        manifest = run_rerank(cfg, worker_cls=simulated_worker(1.0 / (args.rate * tokens)))
        wall = time.perf_counter() - started
    finally:
        ray.shutdown()
    actor, score_s = manifest["scoring_actor"], manifest["timings"]["score_s"]
    window = actor["forward_window_s"]
    return {
        "nodes": nodes,
        "cluster_cpus": sum(r.get("CPU", 0) for r in placed.values()),
        "cluster_accelerators": sum(r.get(RESOURCE, 0) for r in placed.values()),
        "pairs_per_s": {"steady": rows / window, "scoring": rows / score_s, "run": rows / wall},
        "forward_window_s": window,
        "score_s": score_s,
        "run_s": wall,
        "forward_busy": actor["forward_busy"],
        "scoring_actor": actor,
        "timings": manifest["timings"],
        "padding_efficiency": manifest["tokens"]["padding_efficiency"],
        "scored": manifest["counts"]["scored"],
    }


def efficiency(one: dict, two: dict) -> dict:
    """(pairs/s on 2 nodes) / (2 x pairs/s on 1 node), per basis."""
    return {b: two["pairs_per_s"][b] / (2 * one["pairs_per_s"][b]) for b in BASES}


def preprocess_rate(model: str, table, sample: int = 2000) -> float:
    """Pairs/s the model's preprocessing makes on one core (in this process, the model loaded beforehand):
    what one node's CPU can feed its accelerator at most, to size `--rate` well below."""
    from actors.reranker.features import Featurizer
    from actors.reranker.spec import RerankerSpec
    from actors.reranker.worker import load_cross_encoder
    from jobs.bench.data import text_pairs

    featurize = Featurizer(load_cross_encoder(RerankerSpec(model=model), weights=False), None)
    pairs = text_pairs(table.slice(0, sample))
    started = time.perf_counter()
    featurize(pairs)
    return len(pairs) / (time.perf_counter() - started)


def run_nodes(args, model: str) -> dict:
    from jobs.bench.data import skewed_pairs
    from jobs.bench.scale import mean_tokens, write_shards

    load_start = os.getloadavg()
    table = skewed_pairs(args.num_pairs, args.per_query, None, args.seed)
    tokens = mean_tokens(model, table)
    per_core = preprocess_rate(model, table)
    root = args.work_dir or tempfile.mkdtemp(prefix="rerank-nodes-")
    pairs = write_shards(table, os.path.join(root, "pairs"), args.shards)
    runs: dict[int, list[dict]] = {n: [] for n in NODE_COUNTS}
    try:
        for r in range(args.rounds):
            for nodes in NODE_COUNTS:
                out = os.path.join(root, f"out-{nodes}-{r}")
                t0 = time.perf_counter()
                with local_cluster(nodes) as (cluster, _):
                    run = one_run(cluster.address, nodes, pairs, out, table.num_rows, args, model, tokens)
                run["with_cluster_start_stop_s"] = time.perf_counter() - t0
                runs[nodes].append(run)
                shutil.rmtree(out, ignore_errors=True)
                rate = run["pairs_per_s"]
                print(
                    f"[nodes] round {r + 1}/{args.rounds}, {nodes} node(s): steady {rate['steady']:.1f}, "
                    f"scoring stage {rate['scoring']:.1f}, run {rate['run']:.1f} pairs/s "
                    f"(busy {run['forward_busy']:.3f})",
                    flush=True,
                )
    finally:
        if args.work_dir is None:
            shutil.rmtree(root, ignore_errors=True)
    per_round = [efficiency(one, two) for one, two in zip(runs[1], runs[2], strict=True)]
    median = {b: statistics.median(e[b] for e in per_round) for b in BASES}
    return {
        "mode": "nodes",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
        "settings": {k: v for k, v in vars(args).items() if k != "output"},
        "model": model,
        "pairs": table.num_rows,
        "mean_tokens_per_pair": tokens,
        "preprocess_pairs_per_s_one_core": per_core,
        "topology": f"head 0 CPU; per worker node 1 CPU + {RESOURCE}=1; one actor per node (0 CPU, {RESOURCE}=1)",
        "ideal_pairs_per_s": {str(n): n * args.rate for n in NODE_COUNTS},
        "pairs_per_s_median": {
            str(n): {b: statistics.median(x["pairs_per_s"][b] for x in runs[n]) for b in BASES}
            for n in NODE_COUNTS
        },
        "efficiency_per_round": per_round,
        "efficiency_median": median,
        "efficiency_basis": "steady (headline): pairs / the actors' forward window; scoring: pairs / "
        "timings.score_s; run: pairs / the run_rerank call",
        "goal": GOAL,
        "goal_met_steady": bool(median["steady"] >= GOAL),
        "runs": {str(n): v for n, v in runs.items()},
    }


def summary(report: dict) -> str:
    lines = [
        f"{report['pairs']} pairs, {report['mean_tokens_per_pair']:.0f} tokens/pair, simulated accelerator at "
        f"{report['settings']['rate']:g} pairs/s a node (preprocessing on one core: "
        f"{report['preprocess_pairs_per_s_one_core']:.0f} pairs/s); {report['topology']}",
        f"{'round':<7}{'nodes':>6}{'steady':>9}{'scoring':>9}{'run':>9}{'busy':>7}",
    ]
    for r in range(report["settings"]["rounds"]):
        for n in NODE_COUNTS:
            x = report["runs"][str(n)][r]
            rate = x["pairs_per_s"]
            lines.append(
                f"{r + 1:<7}{n:>6}{rate['steady']:>9.1f}{rate['scoring']:>9.1f}{rate['run']:>9.1f}"
                f"{x['forward_busy']:>7.3f}"
            )
        e = report["efficiency_per_round"][r]
        lines.append(f"{'':<7}{'eff':>6}" + "".join(f"{e[b]:>9.3f}" for b in BASES))
    m = report["efficiency_median"]
    lines.append(
        "efficiency vs linear, median: " + ", ".join(f"{b} {m[b]:.3f}" for b in BASES) + f" (goal >= {GOAL}: "
        f"{'met' if report['goal_met_steady'] else 'NOT met'} on steady)"
    )
    return "\n".join(lines)


def resolve_model(args) -> str:
    if args.model:
        return args.model
    from jobs.demo_assets.tiny_lm import build_tiny_reranker

    return str(build_tiny_reranker(os.path.join(args.demo_dir, "models", "tiny-llama-h64-l2-reranker")))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    prepare_local_cluster_env()
    report = run_nodes(args, resolve_model(args))
    print(summary(report))
    write_report(report, args.output)
    return 0


def prepare_local_cluster_env() -> None:
    """This process's environment, which the local cluster's nodes and workers inherit: loopback only,
    offline, no other instance's address, and this repository importable."""
    keep_local_ray_on_loopback()
    for name, value in (("HF_HUB_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(name, value)
    os.environ.pop("RAY_ADDRESS", None)  # the driver joins the cluster started here, nothing else
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))


def write_report(report: dict, path: str | None) -> None:
    """The JSON report at `path` (nothing when None)."""
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(report, f, indent=2, default=str)
        print(f"report: {path}")


if __name__ == "__main__":
    sys.exit(main())
