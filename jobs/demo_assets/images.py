"""Captioned PNG shapes and caption x image pairs, for the multimodal rerank demo."""

from __future__ import annotations

import math
from pathlib import Path

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


def write_images(tmp: Path, final: Path) -> None:
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
        draw_shape(ImageDraw.Draw(image), shape, colour)
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


def draw_shape(draw, shape: str, colour: str) -> None:
    """Fill one shape in `colour` on a PIL ImageDraw of an IMAGE_SIZE square."""
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
