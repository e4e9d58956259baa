"""Media from untrusted corpora through `run_rerank` on the shared Ray: the address policy on real servers
that count their requests, and a block whose media exceed the per-block budget, scored in smaller blocks.

Every server listens on loopback (127.0.0.1, 127.0.0.2); nothing here sends a packet off the machine.
Good pairs must score what `CrossEncoder.predict` gives on the same inputs decoded here.
"""

from __future__ import annotations

import os
import urllib.parse

import pytest
import ray
from sentence_transformers import CrossEncoder

from actors.media.loader import MediaSpec
from actors.reranker.spec import RerankerSpec
from pipelines.rerank.config import RerankConfig
from pipelines.rerank.pipeline import media_stage
from pipelines.rerank.validate import validate_pairs
from tests.integration.test_multimodal import bad, good, image, run_and_check
from tests.media_files import make_image, serve
from tests.pairs_data import write_shards

Q = "a red square"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    d = tmp_path_factory.mktemp("site")
    make_image(d / "red.png", (60, 40), "red")
    make_image(d / "blue.png", (64, 48), "blue")
    return d


@pytest.fixture(scope="module")
def reference(tiny_qwen2vl):
    return CrossEncoder(str(tiny_qwen2vl.st))


def test_internal_addresses_are_refused_by_default_and_scored_once_allowed(
    ray_session, tmp_path, site, tiny_qwen2vl, reference
):
    with serve(site) as first, serve(site, host="127.0.0.2") as second:
        red, blue = f"{first.url}/red.png", f"{first.url}/blue.png"
        refused = "address 127.0.0.1 is loopback; not allowed (see --allow-networks)"
        rows = [
            good(
                "q",
                "text",
                (Q, "a plain text candidate"),
                query_text=Q,
                candidate_text="a plain text candidate",
            ),
            bad(
                "q", "red", "media", f"candidate_image '{red}': {refused}", query_text=Q, candidate_image=red
            ),
            bad(
                "q",
                "blue",
                "media",
                f"candidate_image '{blue}': {refused}",
                query_text=Q,
                candidate_image=blue,
            ),
        ]
        run_and_check(tmp_path / "default", rows, tiny_qwen2vl.st, reference, MediaSpec(timeout_s=5.0))
        assert first.requests == [] and second.requests == []

        to_second = f"{second.url}/blue.png"
        redirect = f"{first.url}/redirect/{urllib.parse.quote(to_second, safe='')}"
        rows = [
            good("q", "red", (Q, image(site / "red.png")), query_text=Q, candidate_image=red),
            good("q", "blue", (Q, image(site / "blue.png")), query_text=Q, candidate_image=blue),
            bad(
                "q",
                "redirected",
                "media",
                f"candidate_image '{redirect}': redirected to '{to_second}': address 127.0.0.2 is loopback; "
                "not allowed (see --allow-networks)",
                query_text=Q,
                candidate_image=redirect,
            ),
        ]
        allowed = MediaSpec(timeout_s=5.0, allow_networks=("127.0.0.1/32",))
        manifest = run_and_check(tmp_path / "allowed", rows, tiny_qwen2vl.st, reference, allowed)
        assert sorted(r["path"] for r in first.requests) == sorted(
            ["/red.png", "/blue.png", redirect[len(first.url) :]]
        )
        assert second.requests == []
    assert list(manifest["config"]["media"]["allow_networks"]) == ["127.0.0.1/32"]


def test_a_block_over_the_media_budget_is_scored_from_several_smaller_blocks(
    ray_session, tmp_path, tiny_qwen2vl, reference
):
    """24 distinct images (about 32 kB decoded each) and a FIFO in two blocks, under a 200 kB budget: each
    media task yields two or three tables. Ray gathers small tables back into blocks of its target size
    (128 MiB), so the block count is checked with that target lowered under the budget."""
    d = tmp_path / "images"
    paths = [make_image(d / f"m{i}.png", (120, 90 + i), ["red", "green", "blue"][i % 3]) for i in range(24)]
    fifo = d / "pipe.png"
    os.mkfifo(fifo)  # a named pipe: opening it for reading would wait for a writer forever
    rows = [
        good(f"q{i // 6}", f"c{i}", (Q, image(p)), query_text=Q, candidate_image=str(p))
        for i, p in enumerate(paths)
    ]
    rows.append(
        bad(
            "q0",
            "fifo",
            "media",
            f"candidate_image '{fifo}': is a FIFO (named pipe), not a regular file",
            query_text=Q,
            candidate_image=str(fifo),
        )
    )
    spec = MediaSpec(media_block_bytes=200_000, max_decoded_bytes=100_000)
    run_and_check(tmp_path / "run", rows, tiny_qwen2vl.st, reference, spec)

    context = ray.data.DataContext.get_current()
    saved = context.target_max_block_size
    context.target_max_block_size = 100_000
    try:
        import pyarrow as pa

        table = pa.Table.from_pylist([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows])
        pairs = write_shards(table, tmp_path / "blocks", shards=2)
        cfg = RerankConfig(
            pairs=str(pairs),
            output=str(tmp_path / "unused"),
            reranker=RerankerSpec(model=str(tiny_qwen2vl.st)),
            media=spec,
        )
        ds = ray.data.read_parquet(str(pairs)).map_batches(validate_pairs, batch_format="pyarrow")
        out = media_stage(ds, cfg).materialize()
        blocks, count = out.num_blocks(), out.count()
    finally:
        context.target_max_block_size = saved
    print(f"\n2 input blocks of 12 and 13 rows -> {blocks} media output blocks under a 200 kB budget")
    assert count == 25 and blocks >= 4


MANIFEST = """<?xml version="1.0" encoding="utf-8"?>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" mediaPresentationDuration="PT2S" minBufferTime="PT1S"
     profiles="urn:mpeg:dash:profile:isoff-on-demand:2011">
  <Period><AdaptationSet mimeType="{mime}">
    <Representation id="1" bandwidth="1000" codecs="{codec}">
      <BaseURL>{url}</BaseURL><SegmentBase indexRange="0-100"/>
    </Representation>
  </AdaptationSet></Period>
</MPD>
"""
DASH = "(looks like a DASH manifest)"


@pytest.fixture
def silent():
    """A listener on 127.0.0.3 that never accepts: a connection would wait in its backlog, unanswered.
    Yields (base URL, a function telling whether anything connected)."""
    import socket

    server = socket.create_server(("127.0.0.3", 0), backlog=8)
    server.setblocking(False)

    def connected() -> bool:
        try:
            server.accept()[0].close()
        except BlockingIOError:
            return False
        return True

    yield f"http://127.0.0.3:{server.getsockname()[1]}", connected
    server.close()


def test_dash_manifests_served_as_media_are_error_rows_and_open_nothing(
    ray_session, tmp_path, site, tiny_qwen2vl, reference, silent
):
    """Manifests served (as .mp4 and .m4a) from an allowed server name a second loopback server the policy
    refuses, and a server that never answers: FFmpeg would fetch what they name, outside the address policy,
    the caps and the deadline. Each is an error row, nothing they name is contacted, the run finishes. Beside
    them, a reference that crashes its decoder and one whose decode never ends (the test faults of
    `actors.media.sandbox`) are error rows too: the worker survives both and nothing is retried."""
    import time

    from tests.integration.test_multimodal import video
    from tests.media_files import make_mp4

    silent_url, silent_connected = silent
    d = tmp_path / "manifests"
    clip = make_mp4(d / "clip.mp4", seconds=1, rate=4)
    with serve(site, host="127.0.0.2") as second:
        targets = {
            "video.mp4": ("video/mp4", "avc1.64000a", f"{second.url}/red.png"),
            "audio.m4a": ("audio/mp4", "mp4a.40.2", f"{second.url}/blue.png"),
            "silent-video.mp4": ("video/mp4", "avc1.64000a", f"{silent_url}/clip.mp4"),
            "silent-audio.m4a": ("audio/mp4", "mp4a.40.2", f"{silent_url}/tone.m4a"),
        }
        for name, (mime, codec, url) in targets.items():
            (d / name).write_text(MANIFEST.format(mime=mime, codec=codec, url=url))
        with serve(d) as first:
            base = first.url
            rows = [
                good("v", "clip", (Q, video(clip)), query_text=Q, candidate_video=f"{base}/clip.mp4"),
                good(
                    "a",
                    "text",
                    (Q, "a plain text candidate"),
                    query_text=Q,
                    candidate_text="a plain text candidate",
                ),
            ]
            for name in targets:
                modality = "audio" if name.endswith(".m4a") else "video"
                ref = f"{base}/{name}"
                reason = f"candidate_{modality} '{ref}': cannot decode as {modality}: not a supported {modality} container {DASH}"
                qid = "a" if modality == "audio" else "v"
                rows.append(bad(qid, name, "media", reason, query_text=Q, **{f"candidate_{modality}": ref}))
            (d / "crash.png").write_bytes(b"RERANK-TEST-CRASH")
            (d / "hang.png").write_bytes(b"RERANK-TEST-HANG")
            for name, reason in (
                ("crash.png", "the decoder crashed twice (killed by SIGABRT)"),
                ("hang.png", "decoding took longer than 3 s"),
            ):
                ref = f"{base}/{name}"
                why = f"candidate_image '{ref}': {reason}"
                rows.append(bad("v", name, "media", why, query_text=Q, candidate_image=ref))
            spec = MediaSpec(timeout_s=5.0, decode_timeout_s=3.0, allow_networks=("127.0.0.1/32",))
            began = time.monotonic()
            run_and_check(tmp_path / "run", rows, tiny_qwen2vl.st, reference, spec)
            elapsed = time.monotonic() - began
        served = ["/clip.mp4", "/crash.png", "/hang.png", *(f"/{n}" for n in targets)]
        assert sorted(r["path"] for r in first.requests) == sorted(served), "each fetched once: no retry"
        assert second.requests == []
    assert not silent_connected()
    print(f"\n4 manifests refused, 1 video scored, in {elapsed:.1f} s")
