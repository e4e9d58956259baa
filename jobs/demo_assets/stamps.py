"""Asset groups built once: each carries a stamp of the recipe that built it, and is swapped into place whole.

A group whose stamp matches is skipped, so re-running is cheap. A group is built in a sibling temporary
directory and renamed into place only once complete, so an interrupted build never leaves a directory that
looks finished. A recipe changes when any constant that shapes its assets changes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from jobs.demo_assets.images import SHAPES
from jobs.demo_assets.pydoc_corpus import DEMO_TOPICS, MAX_DOC_CHARS, MIN_DOC_CHARS
from jobs.demo_assets.reranker import FALSE_TOKEN, MODEL_CARD, RERANKER_CHAT_TEMPLATE, TRUE_TOKEN
from jobs.demo_assets.sampling import CANDIDATES_PER_QUERY, MAX_RELEVANT_PER_QUERY, SEED
from jobs.demo_assets.weights import gguf_path

DEMO_VERSION = "1"
STAMP_FILE = ".demo-stamp.json"


def build_group(target: Path, recipe: dict, write: Callable[[Path], None], force: bool) -> None:
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


def reranker_recipe() -> dict:
    """The stamp of the reranker group: the GGUF it comes from and how it is wrapped."""
    gguf = gguf_path()
    return {
        "version": DEMO_VERSION,
        "gguf": gguf.name,
        "gguf_bytes": gguf.stat().st_size,
        "recipe": _digest(RERANKER_CHAT_TEMPLATE, TRUE_TOKEN, FALSE_TOKEN, MODEL_CARD),
    }


def data_recipe(data_dir: Path) -> dict:
    """The stamp of the data group (text and images) built at `data_dir`."""
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


def _make_readable(root: Path) -> None:
    """mkdtemp and safetensors create owner-only entries; Ray workers under another uid must read them."""
    root.chmod(0o755)
    for path in root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
