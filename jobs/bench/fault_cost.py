"""What a killed driver costs: `python -m jobs.bench.fault_cost`.

Runs `jobs.rerank` three times on one pairs set, each a fresh driver process with its own local Ray
instance, as a preempted single-node job would: (1) a clean run; (2) a run whose whole process group is
SIGKILLed once about half of the pairs are committed; (3) the rerun of (2) with the same run id, which
resumes from the committed pieces. Prints the seconds of each and the ratios that matter: the rerun
against the clean run, and killed + rerun (all the work the fault made you pay for) against the clean run.

    python -m jobs.bench.fault_cost                       # the SmolLM2 demo reranker, 192 pairs, CPU
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from jobs.bench.data import LengthSpec, skewed_pairs
from jobs.loopback import keep_local_ray_on_loopback
from pipelines.runs.checkpoint import Checkpoint

REPO = Path(__file__).resolve().parents[2]


def _rerank(argv: list[str], kill_at: float | None = None, total: int = 0) -> tuple[float, bool]:
    """Run `jobs.rerank` in a new session; with `kill_at`, SIGKILL its process group once that fraction of
    `total` pairs is committed. Returns (seconds, killed)."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobs.rerank", *argv, "--progress-interval", "0"],
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
    )
    if kill_at is None:
        if proc.wait() != 0:
            raise SystemExit(f"jobs.rerank failed with exit code {proc.returncode}")
        return time.perf_counter() - started, False
    ckpt = Checkpoint(argv[argv.index("--output") + 1])
    while proc.poll() is None:
        if ckpt.pieces() and ckpt.committed_rows() >= kill_at * total:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return time.perf_counter() - started, True
        time.sleep(0.2)
    return time.perf_counter() - started, False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.bench.fault_cost", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="reranker directory (default: the SmolLM2 demo reranker)")
    p.add_argument("--num-pairs", type=int, default=192, help="pairs in the set (default: 192)")
    p.add_argument("--block-rows", type=int, default=16, help="rows per scoring call (default: 16)")
    p.add_argument("--kill-at", type=float, default=0.5, help="fraction committed at the kill (default: 0.5)")
    p.add_argument("--demo-dir", default=".demo", help="where the demo reranker is built or found")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    keep_local_ray_on_loopback()  # each run starts its own local instance: loopback only (jobs.loopback)
    model = args.model
    if model is None:
        from jobs.demo_assets import build_demo

        model = build_demo(args.demo_dir).reranker
    work = Path(tempfile.mkdtemp(prefix="fault-cost-"))
    try:
        pairs = work / "pairs"
        pairs.mkdir()
        pq.write_table(skewed_pairs(args.num_pairs, 16, LengthSpec(), 0), pairs / "part-0.parquet")
        common = ["--pairs", str(pairs), "--model", model, "--block-rows", str(args.block_rows)]
        common += ["--max-length", "256", "--max-error-rate", "1"]
        clean, _ = _rerank([*common, "--output", str(work / "clean"), "--run-id", "clean"])
        out = str(work / "faulty")
        killed_s, killed = _rerank([*common, "--output", out, "--run-id", "r"], args.kill_at, args.num_pairs)
        if not killed:
            raise SystemExit("the run finished before the kill; use more --num-pairs")
        resume, _ = _rerank([*common, "--output", out, "--run-id", "r"])
        counts = json.loads((Path(out) / "manifest.json").read_text())["counts"]
        report = {
            "pairs": args.num_pairs,
            "clean_s": round(clean, 1),
            "killed_after_s": round(killed_s, 1),
            "rerun_s": round(resume, 1),
            "pairs_resumed": counts["pairs_resumed"],
            "pairs_scored_by_rerun": counts["pairs_scored_this_run"],
            "rerun_vs_clean": round(resume / clean, 2),
            "killed_plus_rerun_vs_clean": round((killed_s + resume) / clean, 2),
        }
        print(json.dumps(report, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
