"""What a pair brings besides its texts, through the whole job on the session's Ray: its own instruction
(scores equal `predict(prompt=instruction)`, part of the run identity), truncation counted in the
manifest, and classic sequence-classification cross-encoders (one label, or several with --label)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sentence_transformers import CrossEncoder

from actors.pool import PoolSpec
from actors.reranker.spec import RerankerSpec
from jobs import rerank as rerank_job
from pipelines.rerank.config import RerankConfig
from pipelines.rerank.run import run_rerank
from schemas.tables import InputError
from tests.tiny_models import build_bert_cross_encoder

INSTRUCTIONS = [None, "Judge the match.", "", "Is it relevant?"]
DOCS = ["actors hold models", "score pairs", "ray data streams blocks to actors", "data " * 30, "models"]


def pairs_rows(instructions=INSTRUCTIONS) -> list[dict]:
    return [
        {
            "query_id": f"q{q}",
            "candidate_id": f"d{k}",
            "query_text": f"what holds models {q}",
            "candidate_text": doc,
            "instruction": instructions[(q + k) % len(instructions)],
        }
        for q in range(3)
        for k, doc in enumerate(DOCS)
    ]


def write_pairs(path, rows) -> str:
    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path / "part-0.parquet")
    return str(path)


def expected(model_dir, rows, run_prompt=None, max_length=None, label=None):
    """predict, each row with its own instruction as the prompt (else the run's, else the model's default),
    and the rows whose untruncated rendering is over `max_length`."""
    model = CrossEncoder(str(model_dir), max_length=max_length)
    probe = CrossEncoder(str(model_dir))
    default = model.prompts.get(model.default_prompt_name) if model.default_prompt_name else None
    scores, truncated = {}, 0
    for r in rows:
        prompt = r["instruction"] if r["instruction"] is not None else run_prompt or default
        pair = (r["query_text"], r["candidate_text"])
        got = model.predict([pair], prompt=prompt)[0]
        scores[(r["query_id"], r["candidate_id"])] = float(got if label is None else got[label])
        truncated += int(probe.preprocess([pair], prompt=prompt)["attention_mask"].sum()) > max_length
    return scores, truncated


def check_ranked(out, want: dict, manifest: dict, truncated: int) -> None:
    ranked = pq.read_table(out / "ranked").to_pylist()
    got = {(r["query_id"], r["candidate_id"]): r["score"] for r in ranked}
    assert got.keys() == want.keys()
    np.testing.assert_allclose([got[k] for k in want], list(want.values()), atol=1e-5, rtol=0)
    by_query: dict = {}
    for r in ranked:
        by_query.setdefault(r["query_id"], []).append(r)
    for rows in by_query.values():
        rows.sort(key=lambda r: r["rank"])
        assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
        assert rows == sorted(rows, key=lambda r: (-r["score"], r["candidate_id"]))
    counts = manifest["counts"]
    assert counts["pairs_in"] == counts["scored"] == len(want) and counts["failed"] == 0
    assert counts["queries"] == len(by_query) == 3
    assert counts["pairs_truncated"] == truncated
    assert "instruction" not in ranked[0]


def test_instruction_per_pair_and_a_changed_instruction_under_the_same_run_id(
    ray_session, tmp_path, llama_st_10
):
    # llama_st_10 has a default prompt: a null instruction gets it, "" gets no prompt at all.
    rows = pairs_rows()
    pairs = write_pairs(tmp_path / "pairs", rows)
    cfg = RerankConfig(
        pairs=pairs,
        output=str(tmp_path / "out"),
        reranker=RerankerSpec(model=str(llama_st_10), max_length=80, batch_tokens=400),
        pool=PoolSpec(block_rows=8, preprocess_tasks=0),
        run_id="r1",
    )
    manifest = run_rerank(cfg)
    want, truncated = expected(llama_st_10, rows, max_length=80)
    assert 0 < truncated < len(rows)
    check_ranked(tmp_path / "out", want, manifest, truncated)
    assert manifest["identity"]["instructions"].startswith("sha256:")

    changed = [{**r, "instruction": "Something else."} if r["instruction"] else r for r in rows]
    write_pairs(tmp_path / "pairs", changed)
    with pytest.raises(InputError, match=r"complete with a different .*instructions"):
        run_rerank(cfg)


@pytest.fixture(scope="module")
def bert(models_dir):
    return build_bert_cross_encoder(models_dir / "bert-int", seed=5)


@pytest.fixture(scope="module")
def bert3(models_dir):
    return build_bert_cross_encoder(models_dir / "bert3-int", num_labels=3, seed=6)


def test_classic_cross_encoder_through_the_job(ray_session, tmp_path, bert, capsys):
    rows = pairs_rows()
    pairs = write_pairs(tmp_path / "pairs", rows)
    out = tmp_path / "out"
    argv = ["--pairs", pairs, "--model", str(bert), "--output", str(out), "--max-length", "24"]
    assert (
        rerank_job.main([*argv, "--prompt", "judge: ", "--preprocess-tasks", "0", "--progress-interval", "0"])
        == 0
    )
    manifest = json.loads((out / "manifest.json").read_text())
    want, truncated = expected(bert, rows, run_prompt="judge: ", max_length=24)
    assert 0 < truncated < len(rows)
    check_ranked(out, want, manifest, truncated)

    capsys.readouterr()
    other = ["--pairs", pairs, "--model", str(bert), "--output", str(tmp_path / "other")]
    assert rerank_job.main([*other, "--prompt-name", "query"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--prompt-name" in err and "no saved prompts" in err
    assert rerank_job.main([*other, "--prompt", "x", "--prompt-name", "query"]) == 2
    assert "not both" in capsys.readouterr().err


def test_several_labels_need_label_and_many_cut_pairs_warn(ray_session, tmp_path, bert3, capsys):
    rows = pairs_rows()
    pairs = write_pairs(tmp_path / "pairs", rows)
    argv = ["--pairs", pairs, "--model", str(bert3), "--output", str(tmp_path / "refused")]
    assert rerank_job.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: --label: ") and "3 labels" in err

    lines: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: lines.append(record.getMessage())
    logging.getLogger("ray_rerank").addHandler(handler)
    try:
        manifest = run_rerank(
            RerankConfig(
                pairs=pairs,
                output=str(tmp_path / "out"),
                reranker=RerankerSpec(model=str(bert3), label=1, max_length=24),
                pool=PoolSpec(block_rows=8, preprocess_tasks=0),
            )
        )
    finally:
        logging.getLogger("ray_rerank").removeHandler(handler)
    want, truncated = expected(bert3, rows, max_length=24, label=1)
    check_ranked(tmp_path / "out", want, manifest, truncated)
    assert truncated / len(rows) > 0.05
    assert [line for line in lines if "cut to the max length" in line] == [
        f"{truncated} of {len(rows)} scored pairs ({truncated / len(rows):.1%}) were cut to the max length "
        "(--max-length 24, --truncate model); raise --max-length, or pass --truncate document to keep "
        "queries whole"
    ]
