"""What a lost node costs: `python -m jobs.bench.node_loss`.

One local multi-node Ray cluster on loopback (`jobs.bench.nodes.local_cluster`: a head without CPUs, the
driver's, and two worker nodes of one CPU and one `accelerator` each). The real pipeline
(`pipelines.rerank.run.run_rerank`) with the simulated accelerator (`jobs.bench.scale.simulated_worker`, a
scorer whose forward sleeps per padded token, as a GPU kernel waits) scores the same pairs in alternating
runs: a clean one, then one whose scoring actor's node is removed without warning once `--lose-at` of the
pairs are committed (the actor restarts on the other node, which runs the tasks as well; a fresh node is
added after the run, for the next round, as a preempted machine's replacement comes minutes later). The
faulty run
must complete with every pair once; it prints the seconds of each run, the ratio faulty / clean (median over
rounds) and what the manifest says the fault cost (`faults.*`: blocks retried after their actor died, on a
lost node).

    python -m jobs.bench.node_loss --output jobs/bench/results/node-loss-cpu.json
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time

from jobs.bench.nodes import (
    RESOURCE,
    add_worker,
    local_cluster,
    prepare_local_cluster_env,
    resolve_model,
    write_report,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.bench.node_loss", description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=100.0, help="pairs/s of the simulated accelerator (100)")
    p.add_argument("--num-pairs", type=int, default=3000, help="pairs in the set (default: 3000)")
    p.add_argument("--block-rows", type=int, default=100, help="rows per actor call (default: 100)")
    p.add_argument("--lose-at", type=float, default=0.5, help="fraction committed at the loss (0.5)")
    p.add_argument("--rounds", type=int, default=2, help="rounds of (clean, node lost) (default: 2)")
    p.add_argument("--model", default=None, help="reranker directory (default: the tiny Llama reranker)")
    p.add_argument("--demo-dir", default=".demo", help="where the tiny reranker is built or found")
    p.add_argument("--output", default=None, metavar="FILE", help="write the JSON report here")
    return p


def actor_node(cluster) -> str | None:
    """The node id of the alive scoring actor (Ray Data names its actors `MapWorker(...)`)."""
    for actor in cluster.global_state.actor_table(None).values():
        if actor["State"] == "ALIVE" and "MapWorker" in actor["ActorClassName"]:
            return actor["Address"]["NodeID"]
    return None


def lose_actor_node(
    cluster, workers: list, out: str, total: int, at: float, done: threading.Event, seen: dict
):
    """Once `at` of `total` pairs are committed under `out`, remove the scoring actor's node ungracefully
    (from this thread: starting a node needs the main thread, `one_run` adds the replacement); records when
    in `seen`."""
    from pipelines.runs.checkpoint import Checkpoint

    ckpt, started = Checkpoint(out), time.perf_counter()
    while not done.is_set():
        if ckpt.pieces() and ckpt.committed_rows() >= at * total and (node := actor_node(cluster)):
            victim = next(w for w in workers if w.node_id == node)
            cluster.remove_node(victim, allow_graceful=False)
            workers.remove(victim)
            seen |= {"removed_after_s": round(time.perf_counter() - started, 2), "committed_then": at}
            return
        time.sleep(0.05)


def one_run(cluster, workers, cfg, worker_cls, total: int, lose_at: float | None) -> dict:
    from pipelines.rerank.run import run_rerank

    done, seen = threading.Event(), {}
    watcher = None
    if lose_at is not None:
        args = (cluster, workers, cfg.output, total, lose_at, done, seen)
        watcher = threading.Thread(target=lose_actor_node, args=args, daemon=True)
        watcher.start()
    started = time.perf_counter()
    try:
        manifest = run_rerank(cfg, worker_cls=worker_cls)
    finally:
        done.set()
        if watcher is not None:
            watcher.join()
    wall = time.perf_counter() - started
    while len(workers) < 2:  # the lost node's replacement, for the next run
        workers.append(add_worker(cluster))
    if lose_at is not None and not seen:
        raise SystemExit("the run finished before the node was lost; use more --num-pairs or a lower --rate")
    counts = manifest["counts"]
    if counts["scored"] + counts["failed"] != total or counts["failed"]:
        raise SystemExit(f"the run did not score every pair once: {counts}")
    return {"run_s": round(wall, 2), "faults": manifest["faults"], "loss": seen or None}


def run_rounds(args, model: str) -> dict:
    import ray

    from actors.pool import PoolSpec
    from actors.reranker.spec import RerankerSpec
    from jobs.bench.data import skewed_pairs
    from jobs.bench.scale import mean_tokens, simulated_worker, write_shards
    from jobs.ray_session import connect
    from pipelines.rerank.config import RerankConfig

    load_start = os.getloadavg()
    table = skewed_pairs(args.num_pairs, 50, None, 0)
    tokens = mean_tokens(model, table)
    worker_cls = simulated_worker(1.0 / (args.rate * tokens))
    pool = PoolSpec(
        gpus_per_actor=0.0,
        cpus_per_actor=0.0,  # each node's CPU stays with the read and preprocess tasks
        actor_resources=(f"{RESOURCE}=1",),
        torch_threads=1,
        block_rows=args.block_rows,
    )
    root = tempfile.mkdtemp(prefix="rerank-node-loss-")
    pairs = write_shards(table, os.path.join(root, "pairs"), 4)
    runs: dict[str, list[dict]] = {"clean": [], "node_lost": []}
    try:
        with local_cluster(2) as (cluster, workers):
            connect(cluster.address, progress_interval=0)
            try:
                for r in range(args.rounds):
                    for kind, lose_at in (("clean", None), ("node_lost", args.lose_at)):
                        out = os.path.join(root, f"{kind}-{r}")
                        spec = RerankerSpec(model=model, device="cpu")
                        cfg = RerankConfig(pairs=pairs, output=out, reranker=spec, pool=pool)
                        run = one_run(cluster, workers, cfg, worker_cls, table.num_rows, lose_at)
                        runs[kind].append(run)
                        shutil.rmtree(out, ignore_errors=True)
                        print(
                            f"[node_loss] round {r + 1}/{args.rounds} {kind}: {run['run_s']:.1f} s",
                            flush=True,
                        )
            finally:
                ray.shutdown()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    ratios = [f["run_s"] / c["run_s"] for c, f in zip(runs["clean"], runs["node_lost"], strict=True)]
    return {
        "mode": "node_loss",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
        "settings": {k: v for k, v in vars(args).items() if k != "output"},
        "pairs": table.num_rows,
        "topology": f"head 0 CPU; 2 worker nodes of 1 CPU + {RESOURCE}=1; one scoring actor (0 CPU, "
        f"{RESOURCE}=1); its node removed ungracefully mid-run, replaced after the run",
        "node_lost_vs_clean_per_round": [round(x, 3) for x in ratios],
        "node_lost_vs_clean_median": round(statistics.median(ratios), 3),
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not (0 < args.lose_at < 1 and args.rate > 0 and args.num_pairs > 0 and args.rounds > 0):
        raise SystemExit("--lose-at must be in (0, 1); --rate, --num-pairs and --rounds above 0")
    prepare_local_cluster_env()
    report = run_rounds(args, resolve_model(args))
    print(
        f"{report['pairs']} pairs; {report['topology']}\n"
        + "\n".join(
            f"round {r + 1}: clean {c['run_s']:.1f} s, node lost {f['run_s']:.1f} s (faults {f['faults']})"
            for r, (c, f) in enumerate(zip(report["runs"]["clean"], report["runs"]["node_lost"], strict=True))
        )
        + f"\nnode lost / clean, median: {report['node_lost_vs_clean_median']:.2f}"
    )
    write_report(report, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
