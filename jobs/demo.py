"""`python -m jobs.demo`: the embedded default run, offline, on a local Ray instance.

1. builds the demo assets (SmolLM2-135M reranker from its GGUF, all-MiniLM-L6-v2 embedder, Python's own
   documentation topics as corpus, held-out queries with relevance judgements, captioned images);
2. runs the nightly refresh on them: embed corpus and queries, exact top-k retrieval, rerank, publish LATEST,
   and evaluate retrieval against reranking on the judgements;
3. reranks the captioned images with a tiny multimodal reranker (random weights: it shows the media path —
   fetch, decode, visual tokens, error rows — not ranking quality).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

from actors.embedder import EmbedderSpec
from actors.pool import PoolSpec
from actors.reranker.spec import RerankerSpec
from jobs.cli import SettingsParser, run_job
from jobs.demo_assets import build_demo
from schemas.settings import at_least, setting


@dataclass(frozen=True, kw_only=True)
class DemoConfig:
    """The demo's few settings; everything else is the jobs' own defaults."""

    output: str = setting(".demo", metavar="DIR", help="where demo assets and runs are written")
    retrieve_k: int = setting(
        10,
        help="candidates retrieved (and reranked) per query; 10 keeps a newcomer's first run under 2 minutes "
        "on 2 cores (SmolLM2 on CPU scores ~2 pairs/s)",
    )
    torch_threads: int = setting(
        os.cpu_count() or 1, help="torch threads in each actor (default: every core)"
    )
    skip_multimodal: bool = setting(False, help="do not run the image-caption part")
    run_id: str | None = setting(
        None, help="refresh run id (default: a new one; the score cache still applies)"
    )

    def validate(self) -> DemoConfig:
        at_least(self, 1, "retrieve_k", "torch_threads")
        return self


GROUPS = {
    "input/output": ("output",),
    "demo": ("retrieve_k", "torch_threads", "skip_multimodal"),
    "run control": ("run_id",),
}
EXAMPLES = ("python -m jobs.demo", "python -m jobs.demo --retrieve-k 20 --skip-multimodal --output /tmp/demo")


def build_parser() -> SettingsParser:
    return SettingsParser(
        DemoConfig,
        groups=GROUPS,
        examples=EXAMPLES,
        prog="python -m jobs.demo",
        description=__doc__.split("\n\n")[0],
    )


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return run_job(build_parser(), argv, run)


def run(args: DemoConfig, _checked=None) -> str:
    out = os.path.abspath(args.output)
    print(f"[demo] building assets under {out}")
    assets = build_demo(out)

    from jobs.refresh import summary as refresh_summary
    from pipelines.evaluate.pipeline import format_summary
    from pipelines.refresh.config import RefreshConfig
    from pipelines.refresh.pipeline import run_refresh
    from pipelines.storage.uris import read_json

    root = os.path.join(out, "refresh")
    pool = PoolSpec(torch_threads=args.torch_threads)
    cfg = RefreshConfig(
        corpus=assets.corpus,
        queries=assets.queries,
        output=root,
        embedder=EmbedderSpec(model=assets.embedder),
        embed_pool=pool,
        reranker=RerankerSpec(model=assets.reranker, max_length=256),
        rerank_pool=pool,
        retrieve_k=args.retrieve_k,
        run_id=args.run_id,
        qrels=assets.qrels,
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
        _multimodal_part(assets, out, pool)
    return f"[demo] done: {out}"


def _multimodal_part(assets, out: str, pool: PoolSpec) -> None:
    from jobs.demo_assets.tiny_vlm import build_demo_vlm
    from jobs.rerank import summary
    from pipelines.rerank.config import RerankConfig
    from pipelines.rerank.run import run_rerank

    vlm = os.path.join(out, "models", "tiny-qwen2vl-reranker")
    if not os.path.exists(os.path.join(vlm, "modules.json")):
        build_demo_vlm(vlm)
    output = os.path.join(out, "image-rerank", time.strftime("%Y%m%dT%H%M%S"))
    print(f"[demo] multimodal: captions -> images with a tiny random-weight Qwen2-VL reranker ({vlm})")
    manifest = run_rerank(
        RerankConfig(
            pairs=assets.image_pairs, output=output, reranker=RerankerSpec(model=vlm), pool=pool, top_k=3
        )
    )
    print(summary(manifest, output))


if __name__ == "__main__":
    sys.exit(main())
