"""One fine-tuning run: inputs ─► pairs (positives, mined and random negatives) ─► Ray Train (one DDP
group of `--workers`) ─► the best checkpoint exported as `DIR/model/` ─► `DIR/train_manifest.json`.

DIR layout (local or s3://):

    DIR/model/               the trained CrossEncoder (`jobs.rerank --model DIR/model`), with `fusion.json`
                             (the linear fusion weight, tuned on the evaluation queries) when the run has
                             evaluation queries and mines with --embed-model (`pipelines.train.fusion`)
    DIR/train_manifest.json  base model fingerprint, data identity, settings, steps, evaluation curve
    DIR/checkpoints/train/   Ray Train's run: checkpoints, the latest of which a restarted run resumes from
    DIR/data/                the training pairs and evaluation candidates, as trained on (Parquet)
    DIR/_request.json        the settings and input files of the run in progress

Re-running an unfinished run with the same settings and inputs resumes it from its last checkpoint
(weights, optimizer, scheduler, step); other settings are refused; a finished run is replaced only with
--overwrite. The manifest is written last: its presence means `model/` is complete.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import asdict

from actors.embedder import EmbedderSpec
from actors.reranker.spec import RerankerSpec
from pipelines.runs.info import library_versions, model_fingerprint
from pipelines.storage import uris
from pipelines.storage.tables import write_file
from pipelines.train.config import SELECT_METRIC, TrainConfig
from pipelines.train.fusion import skipped, tune_model_fusion
from pipelines.train.inputs import Inputs, Sources, read_inputs
from pipelines.train.loop import CHECKPOINT, LoopConfig, train_loop
from pipelines.train.negatives import KIND, Sampling, eval_candidates, merged_relevant, training_pairs
from schemas.tables import InputError

MANIFEST, REQUEST = "train_manifest.json", "_request.json"
RUN_NAME = "train"
TRAINER_FILES = ("optimizer.pt", "scheduler.pt", "scaler.pt", "trainer_state.json", "training_args.bin")
SELECT_KEY = f"eval_{SELECT_METRIC}"


def reranker_spec(cfg: TrainConfig) -> RerankerSpec:
    """The base model as the scoring jobs load it (fp32 weights: training keeps a full-precision copy)."""
    return RerankerSpec(
        model=cfg.model,
        revision=cfg.revision,
        trust_remote_code=cfg.trust_remote_code,
        max_length=cfg.max_length,
        prompt=cfg.prompt,
        prompt_name=cfg.prompt_name,
        dtype="float32",
        device="cpu" if cfg.device == "cpu" else None,
    )


def request(cfg: TrainConfig, sources: Sources) -> dict:
    settings = {k: v for k, v in asdict(cfg).items() if k != "overwrite"}
    return {"settings": settings, "files": sources.stamps()}


def check_output(cfg: TrainConfig, sources: Sources) -> bool:
    """Whether the run resumes an unfinished one in DIR. Refuses a finished run without --overwrite and
    an unfinished one with other settings or inputs."""
    out = cfg.output
    if cfg.overwrite:
        return False
    if uris.exists(uris.join(out, MANIFEST)):
        raise InputError(f"--output {out}: holds a finished training run; pass --overwrite to replace it")
    held = uris.join(out, REQUEST)
    if uris.exists(held):
        if uris.read_json(held) != _jsonable(request(cfg, sources)):
            raise InputError(
                f"--output {out}: holds an unfinished run with other settings or inputs; rerun it as it was "
                "to resume, pass --overwrite to start over, or choose another --output"
            )
        return True
    return False


def run_train(cfg: TrainConfig, sources: Sources) -> dict:
    """Train, export the selected checkpoint and write the manifest; returns the manifest."""
    started = time.time()
    out = cfg.output
    resuming = check_output(cfg, sources)
    if not resuming:
        for name in ("model", "checkpoints", "data", MANIFEST):
            uris.remove(uris.join(out, name))
        uris.write_json(uris.join(out, REQUEST), request(cfg, sources))
    spec = reranker_spec(cfg).validate()
    inputs = read_inputs(sources)
    data = build_data(cfg, sources, inputs)
    for name in ("pairs", "eval_candidates"):
        if data[name] is not None:
            write_file(data[name], uris.join(out, "data", name), "part-0.parquet")
    loop = LoopConfig(
        spec=spec,
        pairs=data["pairs"],
        eval_candidates=data["eval_candidates"],
        eval_qrels=inputs.eval_qrels,
        loss=cfg.loss,
        pos_weight=float(cfg.negatives_per_positive),
        batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        warmup_ratio=cfg.warmup_ratio,
        eval_steps=cfg.eval_steps,
        seed=cfg.seed,
        use_gpu=use_gpu(cfg),
    )
    result = fit(cfg, loop)
    best, best_metrics = select(result, evaluated=loop.eval_candidates is not None)
    fusion = {"skipped": skipped(data["eval_candidates"], data["mined"])}
    with tempfile.TemporaryDirectory(prefix="ray-rerank-train-") as tmp:
        best.to_directory(tmp)
        model_dir = os.path.join(tmp, CHECKPOINT)
        for name in os.listdir(model_dir):
            if name in TRAINER_FILES or name.startswith("rng_state"):
                os.remove(os.path.join(model_dir, name))
        if fusion["skipped"] is None:  # written into model/ before it is uploaded
            where = {
                "candidates": uris.join(out, "data", "eval_candidates"),
                "qrels": sources.eval_qrels_path,
                "first_stage": f"{cfg.embed_model} (cosine), top {cfg.eval_candidates}",
            }
            fusion = tune_model_fusion(spec, model_dir, data["eval_candidates"], inputs.eval_qrels, where)
        _upload(model_dir, uris.join(out, "model"))
        with tempfile.TemporaryDirectory() as latest:
            result.checkpoint.to_directory(latest)
            history = uris.read_json(os.path.join(latest, CHECKPOINT, "trainer_state.json"))
    manifest = build_manifest(cfg, sources, inputs, data, loop, history, best_metrics, started)
    manifest["fusion"] = None if "skipped" in fusion else fusion
    manifest["fusion_skipped"] = fusion.get("skipped")
    uris.write_json(uris.join(out, MANIFEST), manifest)
    uris.remove(uris.join(out, REQUEST))
    return manifest


def build_data(cfg: TrainConfig, sources: Sources, inputs: Inputs) -> dict:
    """Training pairs and evaluation candidates, with the mined rankings when --embed-model is given."""
    mined = similarity = None
    if cfg.embed_model is not None:
        from pipelines.train.mine import mine

        spec = EmbedderSpec(
            model=cfg.embed_model, trust_remote_code=cfg.trust_remote_code, max_length=None
        ).validate()
        qids = sorted({*inputs.qrels, *inputs.eval_qrels})
        mined, similarity = mine(
            inputs.docs, inputs.queries, qids, spec, max(cfg.mine_depth, cfg.eval_candidates)
        )
    eval_relevant = merged_relevant(inputs.eval_qrels)
    held_out = set().union(*eval_relevant.values()) if eval_relevant else set()
    never = merged_relevant(sources.qrels, sources.eval_qrels or {})
    sampling = Sampling(cfg.hard_negatives if mined else 0, cfg.random_negatives, cfg.mine_depth)
    if not mined:  # no mining: every negative is random, the ratio unchanged
        sampling = Sampling(0, cfg.negatives_per_positive, cfg.mine_depth)
    pairs = training_pairs(
        inputs.queries, inputs.docs, inputs.qrels, never, held_out, mined, sampling, cfg.seed
    )
    evals = None
    if inputs.eval_qrels:
        evals = eval_candidates(
            inputs.queries, inputs.docs, inputs.eval_qrels, mined, cfg.eval_candidates, cfg.seed, similarity
        )
    return {"pairs": pairs, "eval_candidates": evals, "mined": mined is not None, "held_out": len(held_out)}


def use_gpu(cfg: TrainConfig) -> bool:
    import ray

    if cfg.device != "auto":
        return cfg.device == "gpu"
    return ray.cluster_resources().get("GPU", 0) >= cfg.workers


def fit(cfg: TrainConfig, loop: LoopConfig):
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    resources = {"CPU": cfg.cpus_per_worker, **({"GPU": 1} if loop.use_gpu else {})}
    storage = uris.join(cfg.output, "checkpoints")
    if "://" not in storage:
        storage = os.path.abspath(storage)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"loop": loop},
        scaling_config=ScalingConfig(
            num_workers=cfg.workers, use_gpu=loop.use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=RUN_NAME,
            storage_path=storage,
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.keep_checkpoints,
                checkpoint_score_attribute=SELECT_KEY if loop.eval_candidates is not None else None,
                checkpoint_score_order="max",
            ),
        ),
    )
    return trainer.fit()


def select(result, evaluated: bool):
    """The checkpoint to export: the best by nDCG@10 on the evaluation queries (ties: the later one),
    else the last."""
    if not evaluated or not result.best_checkpoints:
        return result.checkpoint, result.metrics or {}
    scored = [(c, m) for c, m in result.best_checkpoints if SELECT_KEY in m]
    if not scored:
        return result.checkpoint, result.metrics or {}
    return max(scored, key=lambda cm: (cm[1][SELECT_KEY], cm[1].get("step", 0)))


def build_manifest(cfg, sources, inputs, data, loop, history, best_metrics, started) -> dict:
    log = history.get("log_history", [])
    curve = [{"step": e["step"], **_eval_metrics(e)} for e in log if SELECT_KEY in e]
    facts = [e for e in log if "world_size" in e]
    synced = [e["replicas_in_sync"] for e in log if "replicas_in_sync" in e]
    pairs = data["pairs"]
    kinds = pairs.column(KIND).to_pylist()
    return {
        "kind": "train",
        "base_model": {"model": cfg.model, **model_fingerprint(cfg.model, cfg.revision)},
        "model": {
            "path": uris.join(cfg.output, "model"),
            **model_fingerprint(uris.join(cfg.output, "model")),
        },
        "prompt": facts[-1]["prompt"] or None if facts else None,
        "data": {
            "files": sources.stamps(),
            "training_queries": len(set(pairs.column("query_id").to_pylist())),
            "evaluation_queries": len(inputs.eval_qrels),
            "pairs": pairs.num_rows,
            "positives": kinds.count("positive"),
            "hard_negatives": kinds.count("hard"),
            "random_negatives": kinds.count("random"),
            "negatives": f"mined with {cfg.embed_model}" if data["mined"] else "random",
            "held_out_documents": data["held_out"],
            "documents_without_text": inputs.skipped_docs,
        },
        "settings": _jsonable(asdict(cfg)),
        "training": {
            "steps": history.get("global_step"),
            "epochs": history.get("epoch"),
            "selected_step": best_metrics.get("step"),
            "selected_by": SELECT_METRIC if curve else "last step",
            "selected_metrics": _eval_metrics(best_metrics),
            "world_size": facts[-1]["world_size"] if facts else None,
            # with several workers: whether all held the same weights at every checkpoint (one DDP group)
            "replicas_in_sync": all(synced) if synced else None,
            "batching": facts[-1].get("batching") if facts else None,
            "resumed_from_step": next(
                (e["resumed_from_step"] for e in facts if "resumed_from_step" in e), None
            ),
            "device": "gpu" if loop.use_gpu else "cpu",
            "loss": cfg.loss,
            "pos_weight": loop.pos_weight if cfg.loss == "bce" else None,
        },
        "curve": curve,
        "train_loss": [{"step": e["step"], "loss": e["loss"]} for e in log if "loss" in e],
        "library_versions": library_versions(),
        "seconds": round(time.time() - started, 1),
    }


def _eval_metrics(logged: dict) -> dict:
    """The evaluator's metrics of one log entry, without the `eval_` prefix and the timing fields."""
    return {
        k[5:]: v
        for k, v in logged.items()
        if k.startswith("eval_") and not k.endswith(("runtime", "_second"))
    }


def _upload(local_dir: str, dest: str) -> None:
    uris.remove(dest)
    fs, path = uris.filesystem(dest)
    fs.makedirs(path, exist_ok=True)
    for name in sorted(os.listdir(local_dir)):
        src = os.path.join(local_dir, name)
        fs.put(src, f"{path}/{name}", recursive=os.path.isdir(src))


def _jsonable(payload: dict) -> dict:
    import json

    return json.loads(json.dumps(payload))
