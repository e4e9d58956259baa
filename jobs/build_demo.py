"""`python -m jobs.build_demo`: build the offline demo assets (see `jobs.demo_assets` for what and how).

SmolLM2 reranker from its GGUF, pydoc corpus / queries / qrels / pairs, captioned images; each group is
stamped with its recipe and skipped when up to date, so re-running is cheap.

    python -m jobs.build_demo --out .demo [--force] [--check]
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import asdict

from jobs.demo_assets import DemoAssets, build_demo


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
