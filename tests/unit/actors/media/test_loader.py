"""The media stage without Ray: decoding, caps, error reasons, one fetch per distinct reference, payloads."""

from __future__ import annotations

import re
import time

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from actors.media import loader
from actors.media.codec import (
    PAYLOAD_TYPE,
    decode_payload,
    encode_payload,
    payload_array,
    payload_inputs,
    payload_to_input,
)
from actors.media.loader import MediaSpec, fetch_bytes, resolve_media
from actors.reranker.pairs import build_pairs
from schemas import columns as c
from tests.media_files import (
    closed_port,
    http_server,
    make_corrupt,
    make_image,
    make_mp4,
    make_wav,
    s3_server,
)

SPEC = MediaSpec(timeout_s=2.0)
LOOPBACK = (
    "127.0.0.0/8",
)  # the test servers listen on loopback, which the address policy refuses by default


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    return {
        "png": make_image(root / "a.png", (60, 40), "red"),
        "png2": make_image(root / "b.png", (90, 30), "blue"),
        "jpg": make_image(root / "c.jpg", (64, 48), "green"),
        "big": make_image(root / "big.png", (400, 300)),
        "wav": make_wav(root / "a.wav", seconds=1.5),
        "wav44": make_wav(root / "stereo.wav", seconds=1.0, rate=44100, channels=2),
        "long_wav": make_wav(root / "long.wav", seconds=4.0),
        "mp4": make_mp4(root / "v.mp4", seconds=2, rate=4),
        "long_mp4": make_mp4(root / "long.mp4", seconds=6, rate=4),
        "corrupt_png": make_corrupt(root / "corrupt.png", like=root / "a.png"),
        "text_png": make_corrupt(root / "text.png"),
        "dir": root,
    }


def pairs_table(**columns) -> pa.Table:
    n = len(next(iter(columns.values())))
    base = {c.QUERY_ID: [f"q{i}" for i in range(n)], c.CANDIDATE_ID: [f"d{i}" for i in range(n)]}
    base.update(columns)
    table = pa.table({k: pa.array(v, pa.string()) for k, v in base.items()})
    return table.append_column(c.ROW_ERROR, pa.nulls(n, pa.string())).append_column(
        c.ROW_STAGE, pa.nulls(n, pa.string())
    )


def errors_of(table: pa.Table) -> list:
    return table.column(c.ROW_ERROR).to_pylist()


# ----------------------------------------------------------------------------------------- decoding


def test_images_decode_to_rgb_and_round_trip(media):
    table = resolve_media(pairs_table(candidate_image=[str(media["png"]), f"file://{media['jpg']}"]), SPEC)
    assert errors_of(table) == [None, None]
    column = table.column(c.media_payload_column("candidate_image"))
    assert column.type == PAYLOAD_TYPE
    images = payload_inputs("image", column)
    want_png = np.asarray(Image.open(media["png"]).convert("RGB"))
    want_jpg = np.asarray(Image.open(media["jpg"]).convert("RGB"))
    assert all(isinstance(im, Image.Image) and im.mode == "RGB" for im in images)
    np.testing.assert_array_equal(np.asarray(images[0]), want_png)
    np.testing.assert_array_equal(np.asarray(images[1]), want_jpg)


def test_audio_is_resampled_to_16k_mono_float32(media):
    table = resolve_media(pairs_table(query_audio=[str(media["wav"]), str(media["wav44"])]), SPEC)
    assert errors_of(table) == [None, None]
    clips = payload_inputs("audio", table.column(c.media_payload_column("query_audio")))
    assert [clip.dtype for clip in clips] == [np.float32, np.float32]
    assert [clip.ndim for clip in clips] == [1, 1]
    assert clips[0].shape[0] == 24000  # 1.5 s at 16 kHz
    assert abs(clips[1].shape[0] - 16000) <= 16  # 1 s of 44.1 kHz stereo, resampled and downmixed
    assert 0.4 < np.abs(clips[0]).max() < 0.6


def test_video_decodes_every_frame_in_one_layout(media):
    table = resolve_media(pairs_table(candidate_video=[str(media["mp4"])]), SPEC)
    (video,) = payload_inputs("video", table.column(c.media_payload_column("candidate_video")))
    assert video.dtype == np.uint8 and video.shape == (8, 3, 64, 64)  # T, C, H, W


def test_payload_round_trip_and_layout_checks():
    image = np.random.default_rng(0).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode_payload("image", encode_payload("image", image)), image)
    np.testing.assert_array_equal(
        np.asarray(payload_to_input("image", encode_payload("image", image))), image
    )
    audio = np.linspace(-1, 1, 100, dtype=np.float32)
    np.testing.assert_array_equal(payload_to_input("audio", encode_payload("audio", audio)), audio)
    video = np.zeros((2, 3, 4, 5), np.uint8)
    np.testing.assert_array_equal(payload_to_input("video", encode_payload("video", video)), video)
    with pytest.raises(ValueError, match=r"video payload must be uint8 \(T, 3, H, W\)"):
        encode_payload("video", np.zeros((2, 4, 5, 3), np.uint8))
    with pytest.raises(ValueError, match=r"audio payload must be float32"):
        encode_payload("audio", np.zeros(10, np.float64))


def test_shared_payload_is_stored_and_decoded_once():
    a, b = encode_payload("audio", np.ones(4, np.float32)), encode_payload("audio", np.zeros(4, np.float32))
    column = payload_array([a, None, a, b, a])
    assert len(column.dictionary) == 2 and column.null_count == 1
    clips = payload_inputs("audio", pa.chunked_array([column, column]))
    assert clips[0] is clips[2] is clips[4] and clips[1] is None
    assert clips[0] is not clips[5]  # another chunk: its own dictionary


# ------------------------------------------------------------------------------------------- dedupe


def test_each_distinct_reference_is_fetched_once_per_block(media, monkeypatch):
    calls: list[str] = []
    real = loader.fetch_bytes

    def counting(ref, spec):
        calls.append(ref)
        return real(ref, spec)

    monkeypatch.setattr(loader, "fetch_bytes", counting)
    png, png2, wav = str(media["png"]), str(media["png2"]), str(media["wav"])
    table = pairs_table(
        query_image=[png, png, None, png2, png, None],
        candidate_image=[png2, png, png, png, png2, None],
        candidate_audio=[None, None, wav, None, wav, wav],
    )
    out = resolve_media(table, SPEC)
    assert sorted(calls) == sorted([png, png2, wav])
    assert errors_of(out) == [None] * 6
    candidate = out.column(c.media_payload_column("candidate_image")).chunks[0]
    assert len(candidate.dictionary) == 2  # two distinct images, stored once each


def test_rows_in_error_or_already_scored_are_not_fetched(media, monkeypatch):
    calls: list[str] = []
    real = loader.fetch_bytes
    monkeypatch.setattr(loader, "fetch_bytes", lambda ref, spec: calls.append(ref) or real(ref, spec))
    png, png2, jpg = str(media["png"]), str(media["png2"]), str(media["jpg"])
    table = pairs_table(candidate_image=[png, png2, jpg])
    table = table.set_column(
        table.schema.get_field_index(c.ROW_ERROR), c.ROW_ERROR, pa.array(["query_id is null", None, None])
    )
    table = table.append_column(c.ROW_CACHED_SCORE, pa.array([None, 0.5, None], pa.float32()))
    out = resolve_media(table, SPEC)
    assert calls == [jpg]
    assert errors_of(out) == ["query_id is null", None, None]
    payloads = out.column(c.media_payload_column("candidate_image")).to_pylist()
    assert [p is not None for p in payloads] == [False, False, True]


# ----------------------------------------------------------------------------------- caps and reasons


def test_caps_and_bad_references_become_readable_reasons(media):
    d = media["dir"]
    spec = MediaSpec(
        timeout_s=2.0,
        max_bytes=200_000,
        max_image_pixels=100_000,
        max_audio_seconds=3.0,
        max_video_frames=16,
        max_video_seconds=5.0,
        allowed_schemes=("file", "http", "https"),
    )
    big_file = d / "big.bin"
    big_file.write_bytes(b"\0" * 310_000)
    huge = make_image(d / "huge.png", (400, 300))  # 120,000 pixels
    cases = {
        ("candidate_image", str(d / "missing.png")): "candidate_image '{ref}': not found",
        ("candidate_image", str(media["corrupt_png"])): "candidate_image '{ref}': cannot decode as image: ",
        ("candidate_image", str(media["text_png"])): "candidate_image '{ref}': cannot decode as image: ",
        ("candidate_image", str(media["wav"])): "candidate_image '{ref}': cannot decode as image: ",
        ("candidate_image", str(big_file)): "candidate_image '{ref}': 310 kB over the 200 kB cap",
        ("candidate_image", str(huge)): "candidate_image '{ref}': 400x300 image is 120,000 pixels, over the "
        "100,000 pixel cap",
        ("candidate_image", "s3://bucket/x.png"): "candidate_image '{ref}': scheme 's3' not allowed "
        "(allowed: file, http, https)",
        ("candidate_image", "ftp://host/x.png"): "candidate_image '{ref}': scheme 'ftp' not allowed",
        ("candidate_image", ""): "candidate_image '': empty reference",
        ("candidate_image", str(d)): "candidate_image '{ref}': is a directory",
        (
            "candidate_audio",
            str(media["long_wav"]),
        ): "candidate_audio '{ref}': 4.0 s of audio, over the 3 s cap",
        ("candidate_audio", str(media["png"])): "candidate_audio '{ref}': cannot decode as audio: ",
        (
            "candidate_video",
            str(media["long_mp4"]),
        ): "candidate_video '{ref}': 24 frames, over the 16 frame cap",
        ("candidate_video", str(media["wav"])): "candidate_video '{ref}': cannot decode as video: ",
        ("candidate_video", str(media["corrupt_png"])): "candidate_video '{ref}': cannot decode as video: ",
        ("query_image", str(media["png"])): None,
    }
    columns = {
        col: [None] * len(cases)
        for col in ("query_image", "candidate_image", "candidate_audio", "candidate_video")
    }
    for i, (col, ref) in enumerate(cases):
        columns[col][i] = ref
    out = resolve_media(pairs_table(**columns), spec)
    stages = out.column(c.ROW_STAGE).to_pylist()
    for got, stage, ((_, ref), want) in zip(errors_of(out), stages, cases.items(), strict=True):
        if want is None:
            assert got is None and stage is None
        else:
            assert got is not None and got.startswith(want.format(ref=ref)), (got, want)
            assert stage == "media"
            assert not re.search(r"0x[0-9a-f]{6}|\.cpp", got), got  # no object addresses or C++ locations
    assert sum(e is None for e in errors_of(out)) == 1

    video_seconds = MediaSpec(max_video_seconds=5.0)
    (reason,) = errors_of(resolve_media(pairs_table(query_video=[str(media["long_mp4"])]), video_seconds))
    assert reason.endswith("6.0 s of video, over the 5 s cap")


def test_http_fetch_404_hang_refused_and_redirects(media):
    spec = MediaSpec(timeout_s=1.0, allow_networks=LOOPBACK)
    with http_server(media["dir"], hang_s=30) as base:
        assert fetch_bytes(f"{base}/a.png", spec) == media["png"].read_bytes()
        refs = [
            f"{base}/a.png",
            f"{base}/nope.png",
            f"{base}/hang/a.png",
            f"{base}/status/500",
            f"http://127.0.0.1:{closed_port()}/a.png",
            f"{base}/redirect/%2Fa.png",
            f"{base}/redirect/ftp%3A%2F%2F127.0.0.1%2Fa.png",
        ]
        start = time.monotonic()
        out = resolve_media(pairs_table(candidate_image=refs), spec)
        elapsed = time.monotonic() - start
    errors = errors_of(out)
    assert errors[0] is None
    assert errors[1] == f"candidate_image '{refs[1]}': not found (HTTP 404)"
    assert errors[2] == f"candidate_image '{refs[2]}': timed out after 1.0 s"
    assert errors[3].startswith(f"candidate_image '{refs[3]}': HTTP 500")
    assert errors[4].startswith(f"candidate_image '{refs[4]}': unreachable: ") and "refused" in errors[4]
    assert errors[5] is None  # a redirect within http is followed
    assert errors[6] == (
        f"candidate_image '{refs[6]}': redirected to 'ftp://127.0.0.1/a.png', scheme 'ftp' not allowed"
    )
    assert elapsed < 5, f"a hanging server held the block for {elapsed:.1f} s with a 1 s timeout"


def test_s3_fetch_honours_aws_endpoint_url(media, monkeypatch):
    import fsspec

    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    with s3_server() as endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        s3 = fsspec.filesystem("s3", endpoint_url=endpoint, skip_instance_cache=True)
        s3.mkdir("media-unit")
        s3.pipe("media-unit/a.png", media["png"].read_bytes())
        refs = ["s3://media-unit/a.png", "s3://media-unit/missing.png", "s3://no-such-bucket/x.png"]
        # A generous deadline: this checks the endpoint and the reasons; timeouts are checked over HTTP.
        out = resolve_media(pairs_table(candidate_image=refs), MediaSpec(timeout_s=30.0))
    errors = errors_of(out)
    assert errors == [
        None,
        f"candidate_image '{refs[1]}': not found",
        f"candidate_image '{refs[2]}': not found",
    ]
    (image, _, _) = payload_inputs("image", out.column(c.media_payload_column("candidate_image")))
    np.testing.assert_array_equal(np.asarray(image), np.asarray(Image.open(media["png"]).convert("RGB")))


# --------------------------------------------------------------------------------------- spec, pairs


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"timeout_s": 0}, "timeout_s: must be > 0"),
        ({"max_bytes": -1}, "max_bytes: must be > 0"),
        ({"allowed_schemes": ("file", "nosuch")}, "allowed_schemes: 'nosuch' is not a known scheme"),
        ({"allowed_schemes": ()}, "allowed_schemes: is empty"),
    ],
)
def test_spec_validation_names_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MediaSpec(**kwargs).validate()


class TextImageModel:
    """Stands in for a CrossEncoder whose processor takes text and images (as model.supports does)."""

    modalities = ("text", "image", "message")

    def supports(self, modality) -> bool:
        if isinstance(modality, tuple):
            return "message" in self.modalities and all(m in self.modalities for m in modality)
        return modality in self.modalities


def test_build_pairs_uses_payloads_and_explains_unsupported_media(media):
    png, wav = str(media["png"]), str(media["wav"])
    table = pairs_table(
        query_text=["a red square", "q", "q", "caption"],
        candidate_text=[None, "with text", None, None],
        query_image=[None, None, None, png],
        candidate_image=[png, png, None, None],
        candidate_audio=[None, None, wav, None],
    )
    table = resolve_media(table, SPEC)
    table = table.append_column("candidate_video", pa.array([None, None, None, str(media["mp4"])]))
    pairs, errors = build_pairs(table, [0, 1, 2, 3], TextImageModel())
    assert len(pairs) == 2
    assert pairs[0][0] == "a red square" and isinstance(pairs[0][1], Image.Image)
    assert pairs[0][1] is pairs[1][1]["image"] and pairs[1][1]["text"] == "with text"
    assert errors[2] == f"unsupported modality: candidate_audio '{wav}' is audio; the model takes text, image"
    # A reference the media stage did not resolve is an error, never scored as the text of its path.
    assert errors[3] == f"candidate_video '{media['mp4']}' was not fetched by the media stage"


def test_media_stage_runs_only_when_media_columns_hold_values(tmp_path):
    import pyarrow.parquet as pq

    from actors.media.loader import MEDIA_COLUMNS
    from pipelines.inputs.sources import media_columns_with_values

    text_only = pa.table(
        {"query_text": ["q"], "candidate_text": ["d"], "candidate_image": pa.nulls(1, pa.string())}
    )
    with_media = pa.table({"query_text": ["q", "q"], "candidate_image": [None, "s3://b/x.png"]})
    pq.write_table(text_only, tmp_path / "a.parquet")
    pq.write_table(with_media, tmp_path / "b.parquet")
    assert media_columns_with_values([str(tmp_path / "a.parquet")], MEDIA_COLUMNS) == []
    files = [str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")]
    assert media_columns_with_values(files, MEDIA_COLUMNS) == ["candidate_image"]
