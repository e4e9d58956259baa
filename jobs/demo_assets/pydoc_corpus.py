"""Real text with no download: Python's own documentation topics (`pydoc_data.topics`).

The demo cuts every topic into paragraph documents and asks a question per held-out topic title; the
benchmark (`jobs.bench.data`) takes the same questions and the documentation's raw words.
"""

from __future__ import annotations

import re
from collections import defaultdict

MAX_DOC_CHARS = 600  # a corpus document is at most this long (~150 tokens)
MIN_DOC_CHARS = 80  # shorter leftovers (stray headings) are dropped

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


def query_id(topic: str) -> str:
    """The demo query id of a pydoc topic key."""
    return f"q-{topic}"


def demo_queries(titles: dict[str, str]) -> dict[str, str]:
    """query_id -> question for every demo topic, given the titles `pydoc_corpus` returns."""
    return {query_id(t): question(titles[t]) for t in DEMO_TOPICS}


def pydoc_corpus() -> tuple[dict[str, str], dict[str, set[str]], dict[str, str]]:
    """Paragraph documents of every pydoc topic, with the topics whose text contains each document.

    Some topics repeat others verbatim ("compound" holds "if", "while", ...; "else" equals "if"). A
    paragraph is owned by the most specific topic that has it (the shortest), so the corpus holds it once,
    and a document counts as relevant to every topic whose text contains all of its paragraphs.
    Returns (doc_id -> text, doc_id -> containing topic keys, topic key -> title).
    """
    from pydoc_data.topics import topics

    titles, blocks = {}, {}
    for key, text in topics.items():
        titles[key], blocks[key] = split_topic(text)
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


def questions_and_words() -> tuple[list[str], list[str]]:
    """(a question per topic title, every whitespace-separated word of the documentation), in topic key
    order: the benchmark's raw material."""
    from pydoc_data.topics import topics

    questions, words = [], []
    for key in sorted(topics):
        text = topics[key]
        title = topic_title(text)
        if title:
            questions.append(question(title))
        words.extend(re.findall(r"\S+", text))
    return questions, words


def topic_title(text: str) -> str:
    """A topic's title: its first line, stripped."""
    return text.strip("\n").split("\n")[0].strip()


def question(title: str) -> str:
    """A natural question from a topic title: 'The "assert" statement' -> 'How does the assert statement
    work in Python?', 'Slicings' -> 'What are slicings in Python?'."""
    name = title.replace('"', "")
    if name.startswith("The "):
        return f"How does the {name[4:]} work in Python?"
    verb = "are" if name.endswith("s") else "is"
    return f"What {verb} {name[0].lower()}{name[1:]} in Python?"


def split_topic(text: str) -> tuple[str, list[str]]:
    """(title, paragraph blocks). Underlines of headings are dropped; long blocks are cut at line ends."""
    title = topic_title(text)
    body = text.strip("\n").split("\n")[1:]
    blocks = []
    for raw in re.split(r"\n[ \t]*\n", "\n".join(body)):
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
