"""`python -m jobs.train` (or `ray-rerank-train`): fine-tune a CrossEncoder reranker on judged queries with
sentence-transformers' own `CrossEncoderTrainer` and losses, distributed with Ray Train.

Needs the `train` extra (`pip install -e '.[train]'`: datasets). Runs locally (starts a Ray instance) or
under `ray job submit --working-dir . -- python -m jobs.train ...`.
"""

from __future__ import annotations

import sys

from jobs.cli import SettingsParser, run_job
from pipelines.train.config import TrainConfig

GROUPS = {
    "input/output": (
        "corpus",
        "queries",
        "qrels",
        "beir",
        "split",
        "format",
        "columns",
        "eval_queries",
        "eval_qrels",
        "output",
        "overwrite",
    ),
    "model": ("model", "revision", "trust_remote_code", "max_length", "prompt", "prompt_name"),
    "negatives": ("embed_model", "hard_negatives", "random_negatives", "mine_depth", "eval_candidates"),
    "training": (
        "loss",
        "epochs",
        "max_steps",
        "batch_size",
        "learning_rate",
        "warmup_ratio",
        "eval_steps",
        "keep_checkpoints",
        "seed",
    ),
    "workers": ("workers", "cpus_per_worker", "device"),
}
EXAMPLES = (
    "python -m jobs.train --corpus corpus.parquet --queries train_queries.parquet --qrels qrels.tsv \\\n"
    "      --eval-queries dev_queries.parquet --model cross-encoder/ms-marco-MiniLM-L6-v2 --output ft/",
    "python -m jobs.train --beir scifact/ --split train --eval-queries dev_ids.txt \\\n"
    "      --eval-qrels scifact/qrels/dev.tsv --embed-model all-MiniLM-L6-v2 --model Qwen/Qwen3-Reranker-0.6B \\\n"
    "      --output s3://bucket/ft/ --workers 4 --batch-size 32 --max-steps 2000",
)
EPILOG = "then score with the trained model: python -m jobs.rerank --pairs pairs.parquet --model ft/model --output out/"


def build_parser() -> SettingsParser:
    return SettingsParser(
        TrainConfig,
        groups=GROUPS,
        examples=EXAMPLES,
        prog="python -m jobs.train",
        description="Fine-tune a CrossEncoder (Transformer + LogitScore, or a sequence-classification "
        "cross-encoder) on judged queries: positives from the qrels, hard negatives mined with --embed-model "
        "plus random ones, BinaryCrossEntropyLoss (or LambdaLoss, ListNetLoss) in CrossEncoderTrainer on a "
        "Ray Train DDP group. Writes the best checkpoint (by nDCG@10 on --eval-queries) as DIR/model, "
        "which every job takes as --model, and DIR/train_manifest.json. Rerunning an unfinished run "
        "resumes it from its last checkpoint.",
        epilog=EPILOG,
    )


def summary(manifest: dict, output: str) -> str:
    data, training = manifest["data"], manifest["training"]
    lines = [
        f"trained {training['steps']} steps on {data['pairs']} pairs ({data['positives']} positives, "
        f"{data['hard_negatives']} hard and {data['random_negatives']} random negatives) from "
        f"{data['training_queries']} queries, {training['world_size']} worker(s) on {training['device']}",
    ]
    if training.get("resumed_from_step"):
        lines.append(f"resumed from the checkpoint of step {training['resumed_from_step']}")
    curve = manifest["curve"]
    if curve:
        first, chosen = curve[0], training["selected_metrics"]
        lines.append(
            f"nDCG@10 on {data['evaluation_queries']} evaluation queries: {first.get('ndcg@10', 0):.4f} at "
            f"step {first['step']} -> {chosen.get('ndcg@10', 0):.4f} at step {training['selected_step']} "
            "(selected)"
        )
    out = output.rstrip("/")
    fusion = manifest.get("fusion")
    if fusion:
        lines.append(
            f"fusion weight {fusion['weight']:.2f} (nDCG@10 {fusion['ndcg@10']:.4f}; reranker alone "
            f"{fusion['reranker_alone_ndcg@10']:.4f}, retrieval alone {fusion['retrieval_alone_ndcg@10']:.4f}) "
            f"tuned on the evaluation queries: {out}/model/fusion.json, read by jobs.rerank --fuse linear"
        )
    lines.append(f"model: {out}/model   manifest: {out}/train_manifest.json")
    return "\n".join(lines)


def check(cfg: TrainConfig):
    """Inputs, judgements and the output, before a Ray instance is started or joined."""
    from pipelines.train.inputs import check_sources
    from pipelines.train.run import check_output

    try:
        import datasets  # noqa: F401
    except ImportError:
        from schemas.tables import InputError

        raise InputError("training needs the datasets package: pip install -e '.[train]'") from None
    sources = check_sources(cfg)
    check_output(cfg, sources)
    return sources


def run(cfg: TrainConfig, sources) -> str:
    from pipelines.train.run import run_train

    return summary(run_train(cfg, sources), cfg.output)


def main(argv: list[str] | None = None) -> int:
    return run_job(build_parser(), argv, run, check)


if __name__ == "__main__":
    sys.exit(main())
