"""The Ray Train worker loop: every worker builds the CrossEncoder and the library's own
`CrossEncoderTrainer`, and the workers train as one DDP group (Ray sets up torch.distributed: gloo on
CPU, NCCL on GPU; accelerate joins that group and shards each batch).

Each worker gets the whole pair table (small: text pairs) and lets the trainer's distributed sampler
split it, so nothing is split twice. Every `eval_steps` the first worker evaluates, the trainer saves a
checkpoint (a full CrossEncoder directory plus optimizer, scheduler and RNG state) and
`RayTrainReportCallback` hands it to Ray Train with the logged metrics. A worker that starts while the run
has a checkpoint (`ray.train.get_checkpoint()`: a restarted run with the same storage and name) resumes
from it with `resume_from_checkpoint`, which restores the weights, the optimizer, the scheduler, the step
and the data order.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass

import pyarrow as pa
from transformers import TrainerCallback

from actors.reranker.spec import RerankerSpec, default_prompt, load_cross_encoder
from pipelines.train.negatives import DOCUMENT, LABEL, QUERY, listwise
from schemas.qrels import Qrels

CHECKPOINT = "checkpoint"  # RayTrainReportCallback.CHECKPOINT_NAME: the HF checkpoint inside Ray's
LOGGING_STEPS = 10


@dataclass(frozen=True)
class LoopConfig:
    """What every worker needs; pickled once into Ray Train's loop config."""

    spec: RerankerSpec
    pairs: pa.Table
    eval_candidates: pa.Table | None
    eval_qrels: Qrels
    loss: str
    pos_weight: float
    batch_size: int  # global
    learning_rate: float
    epochs: float
    max_steps: int | None
    warmup_ratio: float
    eval_steps: int
    seed: int
    use_gpu: bool


def train_loop(config: dict) -> None:
    """`TorchTrainer`'s `train_loop_per_worker`; `config["loop"]` is a LoopConfig."""
    import ray.train
    import torch.distributed as dist
    from ray.train.huggingface.transformers import RayTrainReportCallback, prepare_trainer
    from sentence_transformers.cross_encoder import CrossEncoderTrainer

    cfg: LoopConfig = config["loop"]
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    model = load_cross_encoder(cfg.spec)
    prompt = default_prompt(cfg.spec, model)
    evaluator = None
    if cfg.eval_candidates is not None:
        from pipelines.train.evaluator import RerankEvaluator

        evaluator = RerankEvaluator(cfg.eval_candidates, cfg.eval_qrels, prompt)
    output_dir = tempfile.mkdtemp(prefix="ray-rerank-train-")
    checkpoint = ray.train.get_checkpoint()
    dataset = train_dataset(cfg)
    facts = RunFacts(world, prompt, resuming=checkpoint is not None, batching=batching(cfg, dataset))
    trainer = CrossEncoderTrainer(
        model=model,
        args=training_arguments(cfg, output_dir, world, prompt, evaluator is not None),
        train_dataset=dataset,
        loss=make_loss(model, cfg),
        evaluator=evaluator,
        callbacks=[facts, RayTrainReportCallback()],
    )
    trainer = prepare_trainer(trainer)
    try:
        if checkpoint is None:
            trainer.train()
        else:
            with checkpoint.as_directory() as directory:
                trainer.train(resume_from_checkpoint=os.path.join(directory, CHECKPOINT))
    finally:
        shutil.rmtree(output_dir, ignore_errors=True)


def training_arguments(cfg: LoopConfig, output_dir: str, world: int, prompt: str | None, evaluate: bool):
    import torch
    from sentence_transformers.cross_encoder import CrossEncoderTrainingArguments

    bf16 = cfg.use_gpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return CrossEncoderTrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=cfg.batch_size // world,
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        warmup_steps=cfg.warmup_ratio,  # a fraction of the steps (transformers 5 reads < 1 as one)
        lr_scheduler_type="linear",
        seed=cfg.seed,
        data_seed=cfg.seed,
        eval_strategy="steps" if evaluate else "no",
        eval_steps=cfg.eval_steps,
        save_strategy="steps",
        save_steps=cfg.eval_steps,
        save_total_limit=1,  # local copies only: Ray Train keeps the run's checkpoints under the output
        logging_steps=min(LOGGING_STEPS, cfg.eval_steps),
        report_to="none",
        disable_tqdm=True,
        use_cpu=not cfg.use_gpu,
        bf16=bf16,
        ddp_find_unused_parameters=False,  # a CrossEncoder is no PreTrainedModel; every parameter is used
        prompts=prompt,  # what CrossEncoder.predict (and so every scoring job) puts before each pair
        dataloader_num_workers=0,
        eval_on_start=evaluate,  # the untrained model's scores open the curve
    )


def train_dataset(cfg: LoopConfig):
    from datasets import Dataset

    if cfg.loss == "bce":
        return Dataset(cfg.pairs.select([QUERY, DOCUMENT, LABEL]))
    return Dataset.from_dict(listwise(cfg.pairs))


def batching(cfg: LoopConfig, dataset) -> dict:
    """What one training example is, as the trainer gets them: a pair (bce), or one query's documents
    as one list (listwise losses), with the smallest and largest list."""
    if cfg.loss == "bce":
        return {"example": "pair", "examples": len(dataset)}
    sizes = [len(docs) for docs in dataset[DOCUMENT]]
    return {"example": "query list", "examples": len(dataset), "documents_per_list": [min(sizes), max(sizes)]}


def make_loss(model, cfg: LoopConfig):
    import torch
    from sentence_transformers.cross_encoder import losses

    if cfg.loss == "bce":
        return losses.BinaryCrossEntropyLoss(
            model, pos_weight=torch.tensor(cfg.pos_weight, device=model.device)
        )
    if cfg.loss == "lambda":
        return losses.LambdaLoss(model)
    return losses.ListNetLoss(model)


class RunFacts(TrainerCallback):
    """Records, in the trainer's log history (so in every reported metrics dict and in each checkpoint's
    trainer_state.json), the DDP world size the loop saw, the prompt training applied, what one training
    example is (`batching`) and, for a resumed run, the step it resumed from. With several workers, before
    each checkpoint is saved, whether every worker holds the same weights (`replicas_in_sync`: one DDP
    group keeps them identical; lone processes, or a model DDP does not wrap, drift apart)."""

    def __init__(self, world: int, prompt: str | None, resuming: bool, batching: dict | None = None):
        self.world, self.prompt, self.resuming, self.batching = world, prompt, resuming, batching or {}

    def on_train_begin(self, args, state, control, **kwargs):
        facts = {"world_size": self.world, "prompt": self.prompt or "", "step": state.global_step}
        facts["batching"] = {**self.batching, "per_worker_batch": args.per_device_train_batch_size}
        if self.resuming:
            facts["resumed_from_step"] = state.global_step
        state.log_history.append(facts)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.world > 1 and control.should_save and model is not None:  # every rank saves this step
            digests = gather_digests(model, self.world)
            state.log_history.append(
                {"step": state.global_step, "replicas_in_sync": all(d == digests[0] for d in digests)}
            )


def gather_digests(model, world: int) -> list[tuple[float, ...]]:
    """Every worker's parameter digest (in float64 on the model's device: the sum, the sum of squares and
    a sum weighted by each tensor's position), gathered across the DDP group: equal weights give equal
    digests, a weight one float32 step apart a different one."""
    import torch
    import torch.distributed as dist

    with torch.no_grad():
        total = torch.zeros(3, dtype=torch.float64, device=next(model.parameters()).device)
        for i, p in enumerate(model.parameters()):
            values = p.detach().to(torch.float64)
            total += torch.stack([values.sum(), (values * values).sum(), values.sum() * (i + 1)])
    gathered = [torch.empty_like(total) for _ in range(world)]
    dist.all_gather(gathered, total)
    return [tuple(t.tolist()) for t in gathered]
