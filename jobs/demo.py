"""`python -m jobs.demo`: the embedded default run, offline, on a local Ray instance.

1. builds the demo assets (SmolLM2-135M reranker from its GGUF, all-MiniLM-L6-v2 embedder, Python's own
   documentation topics as corpus, held-out queries with relevance judgements, captioned images);
2. runs the nightly refresh on them: embed corpus and queries, exact top-k retrieval, rerank, publish LATEST,
   and evaluate retrieval against reranking on the judgements;
3. reranks the captioned images with a tiny multimodal reranker (random weights: it shows the media path —
   fetch, decode, visual tokens, error rows — not ranking quality).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from jobs.build_demo import build_demo


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=".demo", help="where demo assets and runs are written")
    p.add_argument("--retrieve-k", type=int, default=16, help="candidates retrieved (and reranked) per query")
    p.add_argument(
        "--torch-threads", type=int, default=os.cpu_count() or 1, help="torch threads in each actor"
    )
    p.add_argument("--skip-multimodal", action="store_true", help="do not run the image-caption part")
    p.add_argument(
        "--run-id", default=None, help="refresh run id (default: a new one; the score cache still applies)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    out = os.path.abspath(args.out)
    print(f"[demo] building assets under {out}")
    assets = build_demo(out)

    from jobs.ray_session import connect
    from jobs.refresh import summary as refresh_summary
    from pipelines.evaluate import format_summary
    from pipelines.io import read_json
    from pipelines.refresh import RefreshConfig, run_refresh

    connect(None)
    root = os.path.join(out, "refresh")
    cfg = RefreshConfig(
        corpus=assets.corpus,
        queries=assets.queries,
        embedder=assets.embedder,
        reranker=assets.reranker,
        output_root=root,
        retrieve_k=args.retrieve_k,
        run_id=args.run_id,
        qrels=assets.qrels,
        rerank_max_length=256,
        torch_threads=args.torch_threads,
    )
    print(f"[demo] nightly refresh: corpus {assets.corpus}, reranker {assets.reranker}")
    started = time.perf_counter()
    manifest = run_refresh(cfg)
    print(refresh_summary(manifest))
    run_dir = os.path.join(root, "runs", manifest["run_id"])
    print(
        f"ranked tables: {run_dir}/ranked/   errors: {run_dir}/errors/   ({time.perf_counter() - started:.0f} s)"
    )
    if manifest.get("evaluation"):
        metrics = read_json(os.path.join(manifest["evaluation"]["output"], "metrics.json"))
        print(format_summary(metrics))
        print(f"report: {manifest['evaluation']['output']}/report.md")

    if not args.skip_multimodal:
        _multimodal_part(assets, out, args.torch_threads)
    return 0


def _multimodal_part(assets, out: str, threads: int) -> None:
    from jobs.rerank import summary
    from pipelines.rerank import RerankConfig, run_rerank
    from tests.tiny_multimodal import build_demo_vlm

    vlm = os.path.join(out, "models", "tiny-qwen2vl-reranker")
    if not os.path.exists(os.path.join(vlm, "modules.json")):
        build_demo_vlm(vlm)
    output = os.path.join(out, "image-rerank", time.strftime("%Y%m%dT%H%M%S"))
    print(f"[demo] multimodal: captions -> images with a tiny random-weight Qwen2-VL reranker ({vlm})")
    manifest = run_rerank(
        RerankConfig(pairs=assets.image_pairs, model=vlm, output=output, torch_threads=threads, top_k=3)
    )
    print(summary(manifest, output))


if __name__ == "__main__":
    sys.exit(main())
