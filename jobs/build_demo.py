"""`python -m jobs.build_demo`: build the offline demo assets (see `jobs.demo_assets` for what and how).

SmolLM2 reranker from its GGUF, pydoc corpus / queries / qrels / pairs, captioned images; each group is
stamped with its recipe and skipped when up to date, so re-running is cheap.

    python -m jobs.build_demo --output .demo [--force] [--check]
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass

from jobs.cli import SettingsParser
from jobs.demo_assets import DemoAssets, build_demo
from schemas.settings import setting


def _check(assets: DemoAssets) -> None:
    """Score two pairs with the built reranker: the relevant one should score higher."""
    from sentence_transformers import CrossEncoder

    pairs = [("what is a list", "A list is a mutable sequence"), ("what is a list", "The weather is nice")]
    scores = CrossEncoder(assets.reranker).predict(pairs)
    for (query, doc), s in zip(pairs, scores, strict=True):
        print(f"check: {s:.4f}  {query!r} / {doc!r}")


@dataclass(frozen=True, kw_only=True)
class BuildDemoConfig:
    output: str = setting(".demo", metavar="DIR", help="directory the assets are written under")
    force: bool = setting(False, help="rebuild even the assets whose stamps match")
    check: bool = setting(False, help="score two sanity pairs with the built reranker")

    def validate(self) -> BuildDemoConfig:
        return self


def build_parser() -> SettingsParser:
    return SettingsParser(
        BuildDemoConfig,
        ray=False,
        groups={"input/output": ("output",), "run control": ("force", "check")},
        examples=(
            "python -m jobs.build_demo",
            "python -m jobs.build_demo --output /tmp/demo --force --check",
        ),
        prog="python -m jobs.build_demo",
        description="Build the offline demo assets (SmolLM2 reranker, pydoc corpus/queries/qrels/pairs, images).",
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    cfg = parser.config(parser.parse_args(argv))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    assets = build_demo(cfg.output, force=cfg.force)
    if cfg.check:
        _check(assets)
    for name, path in asdict(assets).items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
