"""`python -m jobs.rerank`: rerank Parquet shards of query/candidate pairs into ranked Parquet tables.

Runs locally (starts a Ray instance) or under `ray job submit --working-dir . -- python -m jobs.rerank ...`.
"""

from __future__ import annotations

import argparse
import sys

from actors.media_loader import MediaSpec
from pipelines.rerank import RerankConfig
from schemas.tables import InputError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jobs.rerank",
        description="Score query/candidate pairs with a CrossEncoder (Transformer + LogitScore) on a Ray actor "
        "pool and write ranked Parquet tables, an errors table and manifest.json under --output.",
    )
    p.add_argument(
        "--pairs",
        required=True,
        help="pairs Parquet: a file, a directory of shards or a glob; local or s3://",
    )
    p.add_argument(
        "--model",
        required=True,
        help="a sentence-transformers CrossEncoder directory, a plain causal-LM directory (scored as "
        "Transformer + LogitScore on 'yes'/'no'), a multimodal LM directory, a hub id, or an s3:// prefix",
    )
    p.add_argument(
        "--output", required=True, help="output directory (local or s3://): ranked/, errors/, manifest.json"
    )
    p.add_argument(
        "--top-k", type=int, default=None, help="keep only the best K candidates per query (default: all)"
    )
    p.add_argument(
        "--prompt",
        default=None,
        help="instruction passed as the prompt (default: the model's default prompt)",
    )
    p.add_argument(
        "--max-length", type=int, default=None, help="truncate pairs to N tokens (default: the model's limit)"
    )
    p.add_argument(
        "--batch-tokens",
        type=int,
        default=RerankConfig.batch_tokens,
        help="token budget of one micro-batch, padded tokens counted (rows x longest row)",
    )
    p.add_argument(
        "--block-rows",
        type=int,
        default=RerankConfig.block_rows,
        help="rows handed to an actor per call; they are length-sorted together, so larger pads less",
    )
    p.add_argument("--actors", type=int, default=1, help="number of scoring actors (one model replica each)")
    p.add_argument(
        "--gpus-per-actor",
        type=float,
        default=None,
        help="GPUs per scoring actor (default: 1 when the cluster has GPUs, else 0 = CPU)",
    )
    p.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs reserved per scoring actor")
    p.add_argument(
        "--torch-threads", type=int, default=None, help="torch intra-op threads in each actor (CPU scoring)"
    )
    p.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16", "float16"],
        default="auto",
        help="model weights dtype (auto: bfloat16 on GPU, float32 on CPU)",
    )
    p.add_argument(
        "--ray-address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local instance)"
    )
    p.add_argument(
        "--run-id", default=None, help="run id; re-running with the same id resumes and never duplicates rows"
    )
    add_fast_path_flags(p)
    _add_media_flags(p)
    return p


def add_fast_path_flags(p: argparse.ArgumentParser) -> None:
    """Exact speed-ups: each returns the scores CrossEncoder.predict returns (held to 1e-5 in fp32 by the
    tests; `python -m jobs.benchmark` measures them). See docs/benchmark.md for when each one pays."""
    g = p.add_argument_group("scoring speed-ups (exact)")
    g.add_argument(
        "--score-path",
        choices=["logit", "hidden"],
        default="logit",
        help="logit: Transformer(text-generation) + LogitScore, as saved; hidden: the same weights as "
        "Transformer(feature-extraction) + Pooling(lasttoken) + Dense(lm_head[true] - lm_head[false]), which "
        "skips the LM head and, with --attn-implementation flash_attention_2 on GPU, runs unpadded",
    )
    g.add_argument(
        "--fp32-head",
        action="store_true",
        help="compute the score head (LM head or Dense) in fp32 under bf16/fp16 weights, so low precision "
        "does not round nearby scores into ties",
    )
    g.add_argument(
        "--prefix-reuse",
        action="store_true",
        help="for a query's candidates, run the shared instruction+query tokens once and the documents "
        "against their cached keys/values (causal text rerankers; pays on short documents)",
    )
    g.add_argument(
        "--attn-implementation",
        default=None,
        help="transformers attention kernel for the model, e.g. sdpa, eager, flash_attention_2 "
        "(default: the library's choice, sdpa)",
    )


def _add_media_flags(p: argparse.ArgumentParser) -> None:
    m = p.add_argument_group(
        "media",
        "query_/candidate_ image, audio and video columns hold references (a local path, file://, s3://, "
        "http(s)://). CPU tasks fetch each distinct reference once per block and decode it; a reference "
        "that fails any check below becomes one row in errors/ and the rest is scored.",
    )
    d = MediaSpec()
    m.add_argument(
        "--media-timeout",
        type=float,
        default=d.timeout_s,
        help=f"seconds allowed to fetch one reference, connect to last byte (default: {d.timeout_s:g})",
    )
    m.add_argument(
        "--max-media-bytes",
        type=int,
        default=d.max_bytes,
        help=f"largest reference fetched, in bytes (default: {d.max_bytes})",
    )
    m.add_argument(
        "--max-image-pixels",
        type=int,
        default=d.max_image_pixels,
        help=f"largest image, and video frame, in width x height pixels (default: {d.max_image_pixels})",
    )
    m.add_argument(
        "--max-audio-seconds",
        type=float,
        default=d.max_audio_seconds,
        help=f"longest audio clip, in seconds (default: {d.max_audio_seconds:g})",
    )
    m.add_argument(
        "--max-video-frames",
        type=int,
        default=d.max_video_frames,
        help=f"most frames in a video; every frame is decoded (default: {d.max_video_frames})",
    )
    m.add_argument(
        "--max-video-seconds",
        type=float,
        default=d.max_video_seconds,
        help=f"longest video, in seconds (default: {d.max_video_seconds:g})",
    )
    m.add_argument(
        "--allowed-schemes",
        default=",".join(d.allowed_schemes),
        help="comma-separated reference schemes that may be fetched; 'file' covers local paths and file:// "
        f"(default: {','.join(d.allowed_schemes)})",
    )
    m.add_argument(
        "--media-fetch-threads",
        type=int,
        default=d.fetch_threads,
        help=f"references fetched concurrently per block (default: {d.fetch_threads})",
    )
    m.add_argument(
        "--s3-endpoint-url",
        default=None,
        help="S3-compatible endpoint for s3:// media, e.g. http://minio:9000 (default: the AWS_ENDPOINT_URL_S3 "
        "or AWS_ENDPOINT_URL of the workers' environment, else AWS)",
    )


def media_spec_from_args(args: argparse.Namespace) -> MediaSpec:
    return MediaSpec(
        timeout_s=args.media_timeout,
        max_bytes=args.max_media_bytes,
        max_image_pixels=args.max_image_pixels,
        max_audio_seconds=args.max_audio_seconds,
        max_video_frames=args.max_video_frames,
        max_video_seconds=args.max_video_seconds,
        allowed_schemes=tuple(s.strip().lower() for s in args.allowed_schemes.split(",") if s.strip()),
        fetch_threads=args.media_fetch_threads,
        s3_endpoint_url=args.s3_endpoint_url,
    )


def config_from_args(args: argparse.Namespace) -> RerankConfig:
    return RerankConfig(
        pairs=args.pairs,
        model=args.model,
        output=args.output,
        top_k=args.top_k,
        prompt=args.prompt,
        max_length=args.max_length,
        batch_tokens=args.batch_tokens,
        block_rows=args.block_rows,
        actors=args.actors,
        gpus_per_actor=args.gpus_per_actor,
        cpus_per_actor=args.cpus_per_actor,
        torch_threads=args.torch_threads,
        dtype=args.dtype,
        score_path=args.score_path,
        fp32_head=args.fp32_head,
        prefix_reuse=args.prefix_reuse,
        attn_implementation=args.attn_implementation,
        run_id=args.run_id,
        media=media_spec_from_args(args),
    )


def summary(manifest: dict, output: str) -> str:
    counts, tokens, tp = manifest["counts"], manifest["tokens"], manifest["throughput"]
    eff = tokens["padding_efficiency"]
    base = tokens["unsorted_fixed_batches_padding_efficiency"]
    pairs_s = tp["pairs_per_s"]
    return "\n".join(
        [
            f"run {manifest['run_id']}: {counts['pairs_in']} pairs, {counts['scored']} scored, "
            f"{counts['failed']} errors, {counts['queries']} queries",
            f"ranked tables: {output.rstrip('/')}/ranked/   errors: {output.rstrip('/')}/errors/",
            f"throughput: {pairs_s:.1f} pairs/s"
            if pairs_s
            else "throughput: (scoring resumed from checkpoint)",
            f"padding efficiency: {eff:.3f} (unsorted fixed batches of 32: {base:.3f})"
            if eff and base
            else "",
        ]
    ).strip()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args).validate()
        from pipelines.rerank import check_inputs

        check_inputs(cfg.pairs)
    except (InputError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from jobs.ray_session import connect
    from pipelines.rerank import run_rerank

    connect(args.ray_address)
    manifest = run_rerank(cfg)
    print(summary(manifest, cfg.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
