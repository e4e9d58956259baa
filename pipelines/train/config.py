"""The training job's settings: one typed config, one flag per field (`jobs.train`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from actors.model_source import check_model_reference
from pipelines.inputs.sources import FileFormat
from schemas.settings import SettingError, at_least, one_of, setting

Loss = Literal["bce", "lambda", "listnet"]
LOSSES: tuple[str, ...] = get_args(Loss)
Device = Literal["auto", "cpu", "gpu"]
DEVICES: tuple[str, ...] = get_args(Device)
SELECT_METRIC = "ndcg@10"  # what picks the checkpoint, on the evaluation queries


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything one fine-tuning run needs. Inputs are read as `jobs.refresh` reads them (`--corpus`,
    `--queries`, `--qrels`, or `--beir DIR --split train`); the output DIR holds `model/` (the trained
    CrossEncoder every job takes as `--model`), `train_manifest.json` and `checkpoints/`."""

    corpus: str | None = setting(
        None,
        help="corpus (doc_id + doc_text; Parquet, JSON Lines or CSV): a file, a directory of shards or a "
        "glob; local or s3://. Required unless --beir",
    )
    queries: str | None = setting(
        None, help="training queries (query_id + query_text). Required unless --beir"
    )
    qrels: str | None = setting(
        None,
        help="judgements (Parquet, TREC qrels text or BEIR TSV): relevance > 0 is a positive. Required "
        "unless --beir",
    )
    beir: str | None = setting(
        None,
        metavar="DIR",
        help="a BEIR dataset directory: corpus, queries and the split's judgements come from it",
    )
    split: str = setting("train", help="with --beir: the judgements DIR/qrels/<split>.tsv to train on")
    format: FileFormat = setting(
        "auto", help="format of --corpus and --queries: parquet, jsonl or csv; auto: from the file extension"
    )
    columns: tuple[str, ...] | None = setting(
        None,
        flag="column",
        action="append",
        metavar="COLUMN=INPUT",
        help="read the contract column COLUMN (doc_id, doc_text, query_id, query_text) from the input "
        "column INPUT; repeatable",
    )
    eval_queries: str | None = setting(
        None,
        help="validation queries that pick the checkpoint: a queries table (query_id [+ query_text]) or a "
        "text file of query ids, one a line; texts missing there come from --queries (or the BEIR "
        "directory). They must not overlap the training queries",
    )
    eval_qrels: str | None = setting(
        None, help="judgements of the evaluation queries (default: --qrels, or the BEIR split's)"
    )
    output: str = setting(
        metavar="DIR", help="DIR (local or s3://): model/, train_manifest.json, checkpoints/"
    )
    model: str = setting(
        help="the base CrossEncoder: a saved sentence-transformers directory, a sequence-classification "
        "cross-encoder, a plain causal LM (Transformer + LogitScore), a hub id or an s3:// prefix"
    )
    revision: str | None = setting(None, help="hub revision (branch, tag or commit) of --model")
    trust_remote_code: bool = setting(
        False, help="let transformers run the model repository's own Python code (only for models you trust)"
    )
    max_length: int | None = setting(
        None, help="truncate pairs to this many tokens (default: the model's own limit)"
    )
    prompt: str | None = setting(
        None,
        help="the instruction training sees, as jobs.rerank --prompt (default: the model's default prompt); "
        "score the trained model with the same prompt",
    )
    prompt_name: str | None = setting(
        None, metavar="NAME", help="use the model's saved prompt NAME as the prompt"
    )
    embed_model: str | None = setting(
        None,
        metavar="MODEL",
        help="a SentenceTransformer that mines hard negatives (embedded on the driver); without it every "
        "negative is random. With --eval-queries its retrieval scores also tune the linear fusion weight "
        "written to DIR/model/fusion.json",
    )
    hard_negatives: int = setting(
        3, help="hard negatives per positive, mined with --embed-model (random ones without it)"
    )
    random_negatives: int = setting(1, help="random negatives per positive, besides the hard ones")
    mine_depth: int = setting(30, help="hard negatives are drawn from the top N retrieved documents")
    eval_candidates: int = setting(
        30,
        help="documents reranked per evaluation query: the embedder's top N (with --embed-model), else its "
        "judged documents plus random ones up to N",
    )
    loss: Loss = setting(
        "bce",
        help="bce: BinaryCrossEntropyLoss on pairs, pos_weight = negatives per positive; lambda: LambdaLoss, "
        "listnet: ListNetLoss, on each query's positives and negatives as one list",
    )
    epochs: float = setting(1.0, help="passes over the training pairs (ignored when --max-steps is set)")
    max_steps: int | None = setting(None, help="stop after this many optimizer steps (default: --epochs)")
    batch_size: int = setting(
        16, help="pairs (lists, for listwise losses) per optimizer step, over all workers"
    )
    learning_rate: float = setting(2e-5, help="peak learning rate (linear warm-up, then linear decay)")
    warmup_ratio: float = setting(0.1, help="fraction of the steps spent warming up")
    eval_steps: int = setting(50, help="evaluate and checkpoint every N steps")
    keep_checkpoints: int = setting(2, help="checkpoints kept in checkpoints/ (the best and the latest)")
    workers: int = setting(1, help="Ray Train workers, one DDP group (one GPU each on a GPU cluster)")
    cpus_per_worker: float = setting(1.0, help="CPUs each worker reserves (fractions allowed)")
    device: Device = setting("auto", help="auto: a GPU per worker when the cluster has GPUs; cpu; gpu")
    seed: int = setting(12, help="seed of negative sampling and training")
    overwrite: bool = setting(False, help="replace a finished run in DIR (default: refuse)")

    def validate(self) -> TrainConfig:
        one_of(self, "loss", LOSSES)
        one_of(self, "device", DEVICES)
        at_least(self, 0, "hard_negatives", "random_negatives", "seed")
        at_least(self, 1, "mine_depth", "eval_candidates", "batch_size", "eval_steps", "keep_checkpoints")
        at_least(self, 1, "workers", "max_steps")
        at_least(self, 8, "max_length")
        if not self.cpus_per_worker > 0:
            raise SettingError("cpus_per_worker", f"must be > 0, got {self.cpus_per_worker!r}")
        if not (self.learning_rate > 0 and self.epochs > 0 and 0 <= self.warmup_ratio < 1):
            bad = "learning_rate" if not self.learning_rate > 0 else "epochs" if not self.epochs > 0 else None
            raise SettingError(
                bad or "warmup_ratio", "out of range (learning rate, epochs > 0; warm-up in [0, 1))"
            )
        if self.hard_negatives + self.random_negatives < 1:
            raise SettingError("random_negatives", "training needs at least one negative per positive")
        if self.batch_size % self.workers:
            raise SettingError(
                "batch_size",
                f"{self.batch_size} is not a multiple of --workers {self.workers} (it is global)",
            )
        if self.prompt is not None and self.prompt_name is not None:
            raise SettingError("prompt_name", "give either --prompt or --prompt-name, not both")
        for name in ("model", "embed_model"):
            if getattr(self, name) is not None:
                try:
                    check_model_reference(getattr(self, name))
                except ValueError as exc:
                    raise SettingError(name, str(exc)) from None
        return self

    @property
    def negatives_per_positive(self) -> int:
        return self.hard_negatives + self.random_negatives
