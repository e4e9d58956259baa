"""Multimodal pairs through `run_rerank` on the shared Ray, with tiny Qwen2-VL and Qwen2-Audio rerankers.

Media are real files made here, referenced as local paths, file://, http:// (a loopback HTTP server with a
path that hangs, allowed with `allow_networks`) and s3:// (a loopback S3-compatible server). Each run mixes
good and bad references: every good pair must score what `CrossEncoder.predict` gives on the same inputs
decoded independently here, and every bad pair must be in errors/ with its reason.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from sentence_transformers import CrossEncoder

from actors.media.loader import MediaSpec
from actors.pool import PoolSpec
from actors.reranker.spec import RerankerSpec
from actors.reranker.worker import RerankWorker
from pipelines.rerank.config import RerankConfig
from pipelines.rerank.run import run_rerank
from tests.media_files import (
    closed_port,
    http_server,
    make_corrupt,
    make_image,
    make_mp4,
    make_wav,
    s3_server,
)
from tests.pairs_data import write_shards

BUCKET = "media-it"
# The test servers listen on loopback, which the address policy refuses by default. The S3 endpoint is
# the operator's own setting, not corpus data: the policy does not apply to it.
LOOPBACK = ("127.0.0.0/8",)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("mm-media")
    files = {
        "red": make_image(d / "red.png", (60, 40), "red"),
        "blue": make_image(d / "blue.jpg", (64, 48), "blue"),
        "green": make_image(d / "green.png", (90, 30), "green"),
        "huge": make_image(d / "huge.png", (400, 300), "black"),
        "corrupt": make_corrupt(d / "corrupt.png", like=d / "red.png"),
        "video": make_mp4(d / "clip.mp4", seconds=2, rate=4),
        "long_video": make_mp4(d / "long.mp4", seconds=6, rate=4),
        "tone": make_wav(d / "tone.wav", seconds=1.5),
        "stereo": make_wav(d / "stereo.wav", seconds=1.0, rate=44100, channels=2, freq=220),
        "long_tone": make_wav(d / "long.wav", seconds=4.0),
        "corrupt_wav": make_corrupt(d / "corrupt.wav"),
        "heavy": d / "heavy.png",
        "dir": d,
    }
    files["heavy"].write_bytes(np.random.default_rng(0).bytes(400_000))
    return files


@pytest.fixture(scope="module")
def servers(media):
    """(http base URL, s3 endpoint URL), with every media file also uploaded to s3://media-it/."""
    import fsspec

    with http_server(media["dir"], hang_s=60) as base, s3_server() as endpoint:
        s3 = fsspec.filesystem("s3", endpoint_url=endpoint, skip_instance_cache=True)
        s3.mkdir(BUCKET)
        for path in media["dir"].iterdir():
            s3.pipe(f"{BUCKET}/{path.name}", path.read_bytes())
        yield base, endpoint


# Inputs decoded here, independently of the media stage, for the reference scores.
def image(path) -> Image.Image:
    return Image.open(path).convert("RGB")


def video(path) -> np.ndarray:
    from torchcodec.decoders import VideoDecoder

    decoder = VideoDecoder(str(path))
    return decoder.get_frames_in_range(0, len(decoder)).data.numpy()


def audio(path) -> np.ndarray:
    from torchcodec.decoders import AudioDecoder

    return AudioDecoder(str(path), sample_rate=16000, num_channels=1).get_all_samples().data[0].numpy()


def good(qid, cid, pair, **columns) -> dict:
    """A row that must be scored as `pair` (the inputs, decoded here) would be by `CrossEncoder.predict`."""
    return {"query_id": qid, "candidate_id": cid, **columns, "_pair": pair}


def bad(qid, cid, stage, reason, **columns) -> dict:
    """A row that must land in errors/ with this stage and a reason containing `reason`."""
    return {"query_id": qid, "candidate_id": cid, **columns, "_error": (stage, reason)}


def run_and_check(tmp_path, rows, model, reference: CrossEncoder, media_spec: MediaSpec) -> dict:
    """Run the pipeline on `rows` and check scores, ranks and errors. Returns the manifest."""
    names = list(dict.fromkeys(k for r in rows for k in r if not k.startswith("_")))
    table = pa.Table.from_pylist(rows, schema=pa.schema([(n, pa.string()) for n in names]))
    pairs = write_shards(table, tmp_path / "pairs", shards=2)
    cfg = RerankConfig(
        pairs=str(pairs),
        output=str(tmp_path / "out"),
        reranker=RerankerSpec(model=str(model)),
        media=media_spec,
    )
    manifest = run_rerank(cfg)

    key = lambda r: (r["query_id"], r["candidate_id"])  # noqa: E731
    good_rows = [r for r in rows if "_pair" in r]
    bad_rows = [r for r in rows if "_error" in r]
    want = reference.predict([r["_pair"] for r in good_rows], batch_size=8)
    ranked = pq.read_table(tmp_path / "out" / "ranked").to_pylist()
    errors = {key(r): r for r in pq.read_table(tmp_path / "out" / "errors").to_pylist()}

    got = {key(r): r["score"] for r in ranked}
    unscored = {key(r): errors.get(key(r)) for r in good_rows if key(r) not in got}
    assert not unscored, f"good pairs not scored: {unscored}"
    assert len(ranked) == len(got) == len(good_rows), "every good pair is scored exactly once"
    for r, score in zip(good_rows, want, strict=True):
        np.testing.assert_allclose(got[key(r)], score, atol=1e-5, rtol=0, err_msg=str(key(r)))
    assert set(errors) == {key(r) for r in bad_rows}
    for r in bad_rows:
        stage, reason = r["_error"]
        error = errors[key(r)]
        assert error["stage"] == stage and reason in error["error"], (error, r["_error"])
    by_query: dict = {}
    for r in ranked:
        by_query.setdefault(r["query_id"], []).append(r)
    for group in by_query.values():
        group.sort(key=lambda r: r["rank"])
        assert group == sorted(group, key=lambda r: (-r["score"], r["candidate_id"]))
    assert manifest["counts"] == {
        "pairs_in": len(rows),
        "scored": len(good_rows),
        "failed": len(bad_rows),
        "queries": len(by_query),
        "ranked_rows": len(good_rows),
        "pairs_resumed": 0,
        "pairs_scored_this_run": len(rows),  # pairs handled by this run (scored or failed), none resumed
        "pairs_rescored": 0,
        "pieces_unreadable": 0,
        "pairs_truncated": 0,
        "pairs_duplicated": 0,
    }
    assert manifest["config"]["media"]["timeout_s"] == media_spec.timeout_s
    return manifest


def test_image_and_video_pairs_with_bad_references(ray_session, tmp_path, media, servers, tiny_qwen2vl):
    base, endpoint = servers
    m = media
    red, blue, green, clip = str(m["red"]), f"file://{m['blue']}", f"{base}/green.png", str(m["video"])
    hang = f"{base}/hang/red.png"
    spec = MediaSpec(
        timeout_s=3.0,
        max_bytes=300_000,
        max_image_pixels=100_000,
        max_video_frames=16,
        s3_endpoint_url=endpoint,
        allow_networks=LOOPBACK,
    )
    q = "a red square"
    rows = [
        # text -> image, from four kinds of reference; one image shared by several pairs and queries
        good("t2i", "red", (q, image(m["red"])), query_text=q, candidate_image=red),
        good("t2i", "blue-file", (q, image(m["blue"])), query_text=q, candidate_image=blue),
        good("t2i", "green-http", (q, image(m["green"])), query_text=q, candidate_image=green),
        good("t2i", "red-s3", (q, image(m["red"])), query_text=q, candidate_image=f"s3://{BUCKET}/red.png"),
        good(
            "t2i",
            "text",
            (q, "a plain text candidate"),
            query_text=q,
            candidate_text="a plain text candidate",
        ),
        # image -> text, image -> image
        good("i2t", "caption-red", (image(m["red"]), q), query_image=red, candidate_text=q),
        good(
            "i2t",
            "caption-blue",
            (image(m["red"]), "a blue square"),
            query_image=red,
            candidate_text="a blue square",
        ),
        good("i2t", "image", (image(m["red"]), image(m["green"])), query_image=red, candidate_image=green),
        # text -> {text, image}, and {text, image} -> image
        good(
            "t2ti",
            "green",
            ("shapes", {"text": "a green bar", "image": image(m["green"])}),
            query_text="shapes",
            candidate_text="a green bar",
            candidate_image=green,
        ),
        good(
            "t2ti",
            "red",
            ("shapes", {"text": q, "image": image(m["red"])}),
            query_text="shapes",
            candidate_text=q,
            candidate_image=red,
        ),
        good(
            "ti2i",
            "blue",
            ({"text": "like this", "image": image(m["red"])}, image(m["blue"])),
            query_text="like this",
            query_image=red,
            candidate_image=blue,
        ),
        # text -> video, local and over HTTP
        good(
            "t2v",
            "clip",
            ("a test pattern", video(m["video"])),
            query_text="a test pattern",
            candidate_video=clip,
        ),
        good(
            "t2v",
            "clip-http",
            ("a test pattern", video(m["video"])),
            query_text="a test pattern",
            candidate_video=f"{base}/clip.mp4",
        ),
        # bad references: each failure kind once
        bad(
            "t2i",
            "missing",
            "media",
            f"candidate_image '{m['dir']}/nope.png': not found",
            query_text=q,
            candidate_image=f"{m['dir']}/nope.png",
        ),
        bad(
            "t2i",
            "corrupt",
            "media",
            "cannot decode as image",
            query_text=q,
            candidate_image=str(m["corrupt"]),
        ),
        bad(
            "t2i",
            "heavy",
            "media",
            "400 kB over the 300 kB cap",
            query_text=q,
            candidate_image=str(m["heavy"]),
        ),
        bad(
            "t2i",
            "huge",
            "media",
            "400x300 image is 120,000 pixels, over the 100,000 pixel cap",
            query_text=q,
            candidate_image=str(m["huge"]),
        ),
        bad(
            "t2i",
            "ftp",
            "media",
            "scheme 'ftp' not allowed",
            query_text=q,
            candidate_image="ftp://host/red.png",
        ),
        bad(
            "t2i",
            "http-404",
            "media",
            "not found (HTTP 404)",
            query_text=q,
            candidate_image=f"{base}/nope.png",
        ),
        bad(
            "t2i",
            "hang",
            "media",
            f"candidate_image '{hang}': timed out after 3.0 s",
            query_text=q,
            candidate_image=hang,
        ),
        bad(
            "t2i",
            "refused",
            "media",
            "unreachable",
            query_text=q,
            candidate_image=f"http://127.0.0.1:{closed_port()}/red.png",
        ),
        bad(
            "t2i",
            "s3-missing",
            "media",
            f"candidate_image 's3://{BUCKET}/nope.png': not found",
            query_text=q,
            candidate_image=f"s3://{BUCKET}/nope.png",
        ),
        bad(
            "t2i",
            "wav-as-image",
            "media",
            "cannot decode as image",
            query_text=q,
            candidate_image=str(m["tone"]),
        ),
        bad(
            "i2t",
            "query-missing",
            "media",
            "query_image",
            query_image=f"{m['dir']}/nope.png",
            candidate_text=q,
        ),
        bad(
            "t2v",
            "long",
            "media",
            "24 frames, over the 16 frame cap",
            query_text="a test pattern",
            candidate_video=str(m["long_video"]),
        ),
        bad(
            "t2v",
            "audio",
            "score",
            f"candidate_audio '{m['tone']}' is audio; the model takes text, image, video",
            query_text="a test pattern",
            candidate_audio=str(m["tone"]),
        ),
    ]
    run_and_check(tmp_path, rows, tiny_qwen2vl.st, CrossEncoder(str(tiny_qwen2vl.st)), spec)


def test_audio_pairs_with_a_model_directory_without_modules_json(
    ray_session, tmp_path, media, servers, tiny_qwen2audio
):
    """The plain Qwen2-Audio directory is built as Transformer(any-to-any) + LogitScore('yes', 'no')."""
    from sentence_transformers.cross_encoder.modules import LogitScore
    from sentence_transformers.sentence_transformer.modules import Transformer

    base, endpoint = servers
    m = media
    transformer = Transformer(
        str(tiny_qwen2audio.hf),
        transformer_task="any-to-any",
        processing_kwargs={"chat_template": {"add_generation_prompt": True}},
    )
    ids = transformer.tokenizer.convert_tokens_to_ids
    reference = CrossEncoder(modules=[transformer, LogitScore(ids("yes"), ids("no"))], num_labels=1)
    tone = str(m["tone"])
    spec = MediaSpec(timeout_s=5.0, max_audio_seconds=3.0, s3_endpoint_url=endpoint, allow_networks=LOOPBACK)
    q = "a tone"
    rows = [
        good("t2a", "tone", (q, audio(m["tone"])), query_text=q, candidate_audio=tone),
        good(
            "t2a",
            "stereo-44k",
            (q, audio(m["stereo"])),
            query_text=q,
            candidate_audio=f"file://{m['stereo']}",
        ),
        good("t2a", "tone-http", (q, audio(m["tone"])), query_text=q, candidate_audio=f"{base}/tone.wav"),
        good(
            "t2a", "tone-s3", (q, audio(m["tone"])), query_text=q, candidate_audio=f"s3://{BUCKET}/tone.wav"
        ),
        good("t2a", "text", (q, "a written tone"), query_text=q, candidate_text="a written tone"),
        good("a2t", "tone", (audio(m["tone"]), q), query_audio=tone, candidate_text=q),
        good("a2t", "silence", (audio(m["tone"]), "silence"), query_audio=tone, candidate_text="silence"),
        good(
            "ta2t",
            "both",
            ({"text": "listen", "audio": audio(m["stereo"])}, q),
            query_text="listen",
            query_audio=str(m["stereo"]),
            candidate_text=q,
        ),
        bad(
            "t2a",
            "long",
            "media",
            "4.0 s of audio, over the 3 s cap",
            query_text=q,
            candidate_audio=str(m["long_tone"]),
        ),
        bad(
            "t2a",
            "corrupt",
            "media",
            "cannot decode as audio",
            query_text=q,
            candidate_audio=str(m["corrupt_wav"]),
        ),
        bad(
            "t2a",
            "image",
            "score",
            "is image; the model takes text, audio",
            query_text=q,
            candidate_image=str(m["red"]),
        ),
    ]
    run_and_check(tmp_path, rows, tiny_qwen2audio.hf, reference, spec)


def test_token_lengths_include_media_tokens(tiny_qwen2vl, tiny_qwen2audio):
    """The worker's lengths (sorting, token budget) count the tokens a media item expands to."""
    worker = RerankWorker(RerankerSpec(model=str(tiny_qwen2vl.st))).load()
    processor = worker.model[0].processor
    small, large = Image.new("RGB", (56, 56), "red"), Image.new("RGB", (112, 112), "red")
    rng = np.random.default_rng(0)
    clip8 = rng.integers(0, 255, (8, 3, 64, 64), dtype=np.uint8)
    lengths = worker.token_lengths([("q", small), ("q", large), ("q", clip8[:4]), ("q", clip8)])
    merge = processor.image_processor.merge_size**2
    tokens = [processor.image_processor.get_number_of_image_patches(s, s, {}) // merge for s in (56, 112)]
    assert tokens == [4, 16]
    assert lengths[1] - lengths[0] == tokens[1] - tokens[0]
    video_tokens = [
        processor.video_processor.get_num_of_video_patches(t, 64, 64, {}) // merge for t in (4, 8)
    ]
    assert video_tokens == [8, 16]
    assert lengths[3] - lengths[2] == video_tokens[1] - video_tokens[0]

    worker = RerankWorker(RerankerSpec(model=str(tiny_qwen2audio.st)))
    one_s, two_s = np.zeros(16000, np.float32), np.zeros(32000, np.float32)
    lengths = worker.token_lengths([("q", one_s), ("q", two_s)])
    assert lengths[1] - lengths[0] == 25  # Qwen2-Audio: 25 tokens per second


def test_media_stage_runs_in_cpu_tasks_not_in_the_scoring_actors(ray_session, tmp_path, capsys):
    """On CPU-only runs the actors ask for the same resources as a plain task; the media stage must still
    not be fused into them (fetching and decoding never run inside a scoring actor)."""
    import ray

    from pipelines.rerank.pipeline import media_stage, score_stage
    from pipelines.rerank.validate import validate_pairs

    pq.write_table(
        pa.table({"query_id": ["q"], "candidate_id": ["d"], "candidate_image": ["/x.png"]}),
        tmp_path / "p.parquet",
    )
    cfg = RerankConfig(
        pairs=str(tmp_path),
        output=str(tmp_path / "out"),
        reranker=RerankerSpec(model=str(tmp_path)),
        pool=PoolSpec(gpus_per_actor=0),
    )
    ds = ray.data.read_parquet(str(tmp_path)).map_batches(validate_pairs, batch_format="pyarrow")
    score_stage(media_stage(ds, cfg), cfg).explain()
    optimized = capsys.readouterr().out.split("Physical Plan (Optimized)")[1]
    assert "TaskPoolMapOperator[MapBatches(resolve_media_blocks)]" in optimized
    assert "ActorPoolMapOperator[MapBatches(RerankWorker)]" in optimized
