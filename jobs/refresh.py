"""`python -m jobs.refresh`: the nightly retrieve-then-rerank refresh, published under ROOT/LATEST.

Runs locally (starts a Ray instance) or under `ray job submit --working-dir . -- python -m jobs.refresh ...`.
"""

from __future__ import annotations

import argparse
import sys

from jobs.rerank import _add_media_flags, media_spec_from_args
from pipelines.refresh import RefreshConfig
from pipelines.retrieve import METRICS
from schemas.tables import InputError

D = RefreshConfig  # defaults


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jobs.refresh",
        description="Embed the corpus (only new or changed documents) and the queries with a SentenceTransformer, "
        "retrieve the exact top-k per query, rerank the candidates with a CrossEncoder (pairs scored on an "
        "earlier night are taken from the score cache), write ROOT/runs/<run_id>/ and, only when the run "
        "succeeds, point ROOT/LATEST at it.",
    )
    p.add_argument(
        "--corpus",
        required=True,
        help="corpus Parquet (doc_id + doc_text/_image/_audio/_video): "
        "a file, a directory of shards or a glob; local or s3://",
    )
    p.add_argument(
        "--queries", required=True, help="queries Parquet (query_id + query_text/_image/_audio/_video)"
    )
    p.add_argument(
        "--embedder", required=True, help="SentenceTransformer: a saved directory, a hub id or s3:// prefix"
    )
    p.add_argument(
        "--reranker",
        required=True,
        help="CrossEncoder, as `jobs.rerank --model`: an ST directory, a "
        "causal-LM or multimodal-LM directory, a hub id or s3:// prefix",
    )
    p.add_argument(
        "--output-root", required=True, help="ROOT (local or s3://): runs/<run_id>/, LATEST, score_cache/"
    )
    p.add_argument(
        "--retrieve-k",
        type=int,
        default=D.retrieve_k,
        help="candidates retrieved per query (default: %(default)s)",
    )
    p.add_argument(
        "--top-k",
        type=int,
        default=None,
        help="keep only the best K reranked candidates per query (default: all)",
    )
    p.add_argument(
        "--run-id",
        default=None,
        help="run id (default: a timestamp); re-running an id resumes it and never duplicates rows",
    )
    p.add_argument(
        "--qrels",
        default=None,
        help="relevance judgements (Parquet or TREC qrels): evaluate retrieval "
        "and reranking into runs/<run_id>/eval/",
    )
    p.add_argument(
        "--metric", choices=METRICS, default=D.metric, help="retrieval similarity (default: %(default)s)"
    )
    e = p.add_argument_group("embedding")
    e.add_argument(
        "--query-prompt-name",
        default=None,
        help="embedder prompt name for queries (default: the model's 'query' prompt, as encode_query)",
    )
    e.add_argument(
        "--query-prompt", default=None, help="literal prompt prepended to queries (instead of a name)"
    )
    e.add_argument(
        "--document-prompt-name",
        default=None,
        help="embedder prompt name for documents (default: "
        "'document', 'passage' or 'corpus', as encode_document)",
    )
    e.add_argument("--document-prompt", default=None, help="literal prompt prepended to documents")
    e.add_argument("--normalize-embeddings", action="store_true", help="L2-normalise the stored embeddings")
    e.add_argument(
        "--embed-batch-tokens",
        type=int,
        default=D.embed_batch_tokens,
        help="token budget of one embedding micro-batch, padded tokens counted (default: %(default)s)",
    )
    e.add_argument("--embed-max-length", type=int, default=None, help="truncate embedder inputs to N tokens")
    e.add_argument(
        "--embed-block-rows",
        type=int,
        default=D.embed_block_rows,
        help="rows per embedding actor call (default: %(default)s)",
    )
    e.add_argument(
        "--embed-actors", type=int, default=D.embed_actors, help="embedding actors (default: %(default)s)"
    )
    e.add_argument(
        "--retrieve-block-rows",
        type=int,
        default=D.retrieve_block_rows,
        help="corpus rows scored against every query in one task (default: %(default)s)",
    )
    r = p.add_argument_group("reranking")
    r.add_argument(
        "--rerank-prompt", default=None, help="reranker instruction (default: the model's default prompt)"
    )
    r.add_argument("--rerank-max-length", type=int, default=None, help="truncate pairs to N tokens")
    r.add_argument(
        "--rerank-batch-tokens",
        type=int,
        default=D.rerank_batch_tokens,
        help="token budget of one reranker micro-batch (default: %(default)s)",
    )
    r.add_argument(
        "--rerank-block-rows",
        type=int,
        default=D.rerank_block_rows,
        help="rows per reranker actor call (default: %(default)s)",
    )
    r.add_argument(
        "--rerank-actors", type=int, default=D.rerank_actors, help="reranker actors (default: %(default)s)"
    )
    x = p.add_argument_group("resources")
    x.add_argument(
        "--gpus-per-actor",
        type=float,
        default=None,
        help="GPUs per model actor (default: 1 when the cluster has GPUs, else 0 = CPU)",
    )
    x.add_argument("--cpus-per-actor", type=float, default=D.cpus_per_actor, help="CPUs per model actor")
    x.add_argument(
        "--torch-threads", type=int, default=None, help="torch intra-op threads per actor (CPU runs)"
    )
    x.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16", "float16"],
        default=D.dtype,
        help="model weights dtype (auto: bfloat16 on GPU, float32 on CPU)",
    )
    x.add_argument(
        "--rows-per-partition",
        type=int,
        default=D.rows_per_partition,
        help="rows per shuffle partition of the joins and merges (default: %(default)s)",
    )
    x.add_argument(
        "--ray-address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local instance)"
    )
    _add_media_flags(p)
    return p


def config_from_args(args: argparse.Namespace) -> RefreshConfig:
    return RefreshConfig(
        corpus=args.corpus,
        queries=args.queries,
        embedder=args.embedder,
        reranker=args.reranker,
        output_root=args.output_root,
        retrieve_k=args.retrieve_k,
        top_k=args.top_k,
        run_id=args.run_id,
        qrels=args.qrels,
        metric=args.metric,
        query_prompt_name=args.query_prompt_name,
        query_prompt=args.query_prompt,
        document_prompt_name=args.document_prompt_name,
        document_prompt=args.document_prompt,
        normalize_embeddings=args.normalize_embeddings,
        embed_batch_tokens=args.embed_batch_tokens,
        embed_max_length=args.embed_max_length,
        embed_block_rows=args.embed_block_rows,
        embed_actors=args.embed_actors,
        retrieve_block_rows=args.retrieve_block_rows,
        rerank_prompt=args.rerank_prompt,
        rerank_max_length=args.rerank_max_length,
        rerank_batch_tokens=args.rerank_batch_tokens,
        rerank_block_rows=args.rerank_block_rows,
        rerank_actors=args.rerank_actors,
        gpus_per_actor=args.gpus_per_actor,
        cpus_per_actor=args.cpus_per_actor,
        torch_threads=args.torch_threads,
        dtype=args.dtype,
        rows_per_partition=args.rows_per_partition,
        media=media_spec_from_args(args),
    )


def summary(manifest: dict) -> str:
    n, t = manifest["counts"], manifest["throughput"]
    root = manifest["root"].rstrip("/")
    pairs_s = t.get("pairs_per_s")
    lines = [
        f"LATEST -> {manifest['run_id']} ({root}/runs/{manifest['run_id']}/)",
        f"docs: {n['docs']} ({n['docs_embedded']} embedded, {n['docs_reused']} reused, {n['docs_failed']} failed); "
        f"queries: {n['queries']} ({n['queries_failed']} failed)",
        f"candidates: {n['candidates']}; reranked: {n['scored']} scored, {n['cache_hits']} from the score cache, "
        f"{n['rerank_failed']} errors",
        f"throughput: {pairs_s:.1f} pairs/s" if pairs_s else "throughput: (no pair scored in this process)",
    ]
    if manifest.get("resumed_stages"):
        lines.append(f"resumed: {', '.join(manifest['resumed_stages'])} finished earlier")
    if manifest.get("evaluation"):
        lines.append(f"evaluation: {manifest['evaluation']['output']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args).validate()
        from pipelines.refresh import check_inputs

        check_inputs(cfg)
    except (InputError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from jobs.ray_session import connect
    from pipelines.refresh import run_refresh

    connect(args.ray_address)
    manifest = run_refresh(cfg)
    print(summary(manifest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
