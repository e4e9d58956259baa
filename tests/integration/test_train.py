"""`jobs.train` on the shared local Ray: a learnable synthetic task, trained through the real CLI, then scored
by `jobs.rerank` and evaluated by `jobs.evaluate` on held-out queries; overlapping queries exit 2.

The task: sixteen key words; each has three documents relevant to its training query and three to its
evaluation query (the key word among filler words), plus filler-only distractors. A reranker must learn
that a relevant document holds the query's word. The tiny BERT cross-encoder is re-initialised with a
small weight scale (the shared fixture's wide one, made to spread untrained scores, trains poorly).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from jobs import evaluate as evaluate_job
from jobs import rerank as rerank_job
from jobs import train as train_job

pytestmark = pytest.mark.long  # minutes each: run with `bash infra/test.sh -m long`

KEYS = [
    "ray", "data", "streams", "blocks", "actors", "models", "score", "pairs",
    "query", "document", "word", "judge", "relevant", "answer", "question", "duplicate",
]  # fmt: skip
FILL = ["the", "a", "of", "is", "it", "to", "and", "that"]
STEPS = 150


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def task(tmp_path_factory, models_dir) -> dict:
    tmp = tmp_path_factory.mktemp("train")
    rng = random.Random(0)
    docs, qrels, train_q, eval_q = [], [], [], []
    for k in KEYS:
        for j in range(6):
            words = rng.sample(FILL, 3)
            words.insert(rng.randrange(4), k)
            docs.append({"doc_id": f"{k}-{j}", "doc_text": " ".join(words)})
            qrels.append((f"t-{k}" if j < 3 else f"e-{k}", f"{k}-{j}", 1))
        train_q.append({"query_id": f"t-{k}", "query_text": k})
        eval_q.append({"query_id": f"e-{k}", "query_text": f"{k} {k}"})
    docs += [{"doc_id": f"x-{j}", "doc_text": " ".join(rng.sample(FILL, 4))} for j in range(200)]
    (tmp / "qrels.txt").write_text("".join(f"{q} 0 {d} {r}\n" for q, d, r in qrels))
    # Held-out pairs: each evaluation query against its three relevant documents and 27 others.
    by_id = {d["doc_id"]: d["doc_text"] for d in docs}
    pairs = []
    for q in eval_q:
        key = q["query_text"].split()[0]
        others = rng.sample([d for d in by_id if not d.startswith(key + "-")], 27)
        for d in [f"{key}-{j}" for j in range(3, 6)] + others:
            pairs.append(
                {
                    "query_id": q["query_id"],
                    "candidate_id": d,
                    "query_text": q["query_text"],
                    "candidate_text": by_id[d],
                }
            )
    return {
        "tmp": tmp,
        "corpus": write_jsonl(tmp / "corpus.jsonl", docs),
        "train_queries": write_jsonl(tmp / "train_queries.jsonl", train_q),
        "eval_queries": write_jsonl(tmp / "eval_queries.jsonl", eval_q),
        "qrels": str(tmp / "qrels.txt"),
        "pairs": write_jsonl(tmp / "eval_pairs.jsonl", pairs),
        "model": str(small_bert(models_dir / "bert-train")),
    }


def small_bert(out: Path) -> Path:
    """The fixture tokenizer's BERT cross-encoder, hidden 64, weights drawn with std 0.02."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from tests.tiny_models import build_bert_cross_encoder

    if not (out / "config.json").exists():
        build_bert_cross_encoder(out)
        config = BertConfig.from_pretrained(out)
        config.update({"initializer_range": 0.02, "hidden_size": 64, "intermediate_size": 128})
        torch.manual_seed(0)
        BertForSequenceClassification(config).save_pretrained(out)
    return out


def train_args(task: dict, output: Path, *extra: str) -> list[str]:
    return [
        "--corpus", task["corpus"], "--queries", task["train_queries"], "--qrels", task["qrels"],
        "--eval-queries", task["eval_queries"], "--model", task["model"], "--output", str(output),
        "--learning-rate", "1e-3", "--batch-size", "16", "--eval-steps", "50", "--progress-interval", "0",
        *extra,
    ]  # fmt: skip


def held_out_ndcg(task: dict, models: dict[str, str]) -> dict[str, float]:
    """nDCG@10 of each model on the held-out pairs: jobs.rerank, then one jobs.evaluate over the runs."""
    runs = []
    for name, model in models.items():
        out = task["tmp"] / f"rerank-{name}"
        assert rerank_job.main(["--pairs", task["pairs"], "--model", model, "--output", str(out)]) == 0
        runs += ["--run", f"{name}={out}"]
    assert evaluate_job.main(["--qrels", task["qrels"], *runs, "--output", str(task["tmp"] / "eval")]) == 0
    metrics = json.loads((task["tmp"] / "eval" / "metrics.json").read_text())
    return {name: metrics["runs"][name]["mean"]["ndcg@10"] for name in models}


@pytest.fixture(scope="module")
def trained(ray_session, task) -> Path:
    output = task["tmp"] / "ft"
    assert train_job.main(train_args(task, output, "--max-steps", str(STEPS))) == 0
    return output


def test_training_beats_the_untrained_model_on_held_out_queries(task, trained):
    ndcg = held_out_ndcg(task, {"base": task["model"], "tuned": str(trained / "model")})
    assert ndcg["tuned"] > ndcg["base"] + 0.2, ndcg


def test_the_manifest_records_model_data_settings_and_curve(task, trained):
    from pipelines.runs.info import model_fingerprint

    manifest = json.loads((trained / "train_manifest.json").read_text())
    assert manifest["base_model"]["fingerprint"] == model_fingerprint(task["model"])["fingerprint"]
    assert manifest["training"]["steps"] == STEPS and manifest["training"]["world_size"] == 1
    assert manifest["settings"]["max_steps"] == STEPS and manifest["settings"]["loss"] == "bce"
    data = manifest["data"]
    assert data["positives"] == 48 and data["random_negatives"] == 4 * 48 and data["hard_negatives"] == 0
    assert [e["step"] for e in manifest["curve"]] == [0, 50, 100, 150]
    best = max(manifest["curve"], key=lambda e: (e["ndcg@10"], e["step"]))
    assert manifest["training"]["selected_step"] == best["step"] and best["step"] > 0
    assert manifest["data"]["files"]["corpus"][0][0] == task["corpus"]


def test_evaluation_queries_that_are_training_queries_exit_2(ray_session, task, capsys):
    args = train_args(task, task["tmp"] / "overlap", "--max-steps", "2")
    args[args.index("--eval-queries") + 1] = task["train_queries"]
    assert train_job.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "16 evaluation queries are also training queries (t-actors" in err[0]


def test_a_finished_run_is_not_replaced_without_overwrite(task, trained, capsys):
    before = (trained / "train_manifest.json").read_text()
    assert train_job.main(train_args(task, trained, "--max-steps", str(STEPS))) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert (trained / "train_manifest.json").read_text() == before
    shutil.rmtree(task["tmp"] / "overlap", ignore_errors=True)


def test_a_run_killed_after_a_checkpoint_resumes_from_it(ray_session, task):
    """The driver's process group SIGKILLed once Ray Train holds a checkpoint; the same command again
    resumes from it (weights, optimizer, scheduler, step) and trains only the remaining steps."""
    import os
    import signal
    import time

    from tests.conftest import start_job_on_session

    output = task["tmp"] / "killed"
    argv = train_args(task, output, "--max-steps", str(STEPS))
    driver = start_job_on_session("jobs.train", argv)
    deadline = time.monotonic() + 600
    checkpoints = output / "checkpoints"
    # A checkpoint counts once Ray Train has registered it (its snapshot names it), not when its directory
    # appears: a run killed in between has nothing to resume from.
    while not list(checkpoints.rglob("checkpoint_manager_snapshot.json")) and driver.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
        time.sleep(0.2)
    os.killpg(driver.pid, signal.SIGKILL)  # preemption: no clean-up
    driver.wait()
    assert not (output / "train_manifest.json").exists(), "killed before the run finished"

    assert train_job.main(argv) == 0
    training = json.loads((output / "train_manifest.json").read_text())["training"]
    assert training["steps"] == STEPS  # the same final step count as a fresh run
    assert 0 < training["resumed_from_step"] < STEPS  # fewer steps trained by the second driver
    assert training["resumed_from_step"] % 50 == 0  # a checkpoint's step (--eval-steps 50)
