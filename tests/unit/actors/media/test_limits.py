"""Memory bounds of the media stage, without Ray: decoded-size caps read from headers, the per-block budget
(several output blocks, peak memory measured), bounded audio decoding, and local references that are not
regular files (a FIFO, a device, a directory) refused without blocking."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from actors.media.codec import decode_payload, encode_payload, payload_inputs
from actors.media.decode import decode
from actors.media.loader import MediaSpec, resolve_media, resolve_media_blocks
from schemas import columns as c
from tests.media_files import (
    make_image,
    make_mp3_with_short_header,
    make_mp4,
    make_png_declaring,
    make_wav,
)


def pairs(**columns) -> pa.Table:
    n = len(next(iter(columns.values())))
    base = {c.QUERY_ID: [f"q{i // 10}" for i in range(n)], c.CANDIDATE_ID: [f"d{i}" for i in range(n)]}
    table = pa.table({k: pa.array(v, pa.string()) for k, v in {**base, **columns}.items()})
    return table.append_column(c.ROW_ERROR, pa.nulls(n, pa.string())).append_column(
        c.ROW_STAGE, pa.nulls(n, pa.string())
    )


def errors_of(table: pa.Table) -> list:
    return table.column(c.ROW_ERROR).to_pylist()


def status_bytes(field: str) -> int:
    """A kB figure of /proc/self/status (VmRSS: resident now, VmHWM: peak resident), in bytes."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def reset_peak_resident() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS


def test_a_small_file_that_would_decode_huge_is_refused_from_its_header(tmp_path):
    bomb = make_png_declaring(tmp_path / "bomb.png", 20000, 20000)  # decodes to 1.2 GB of RGB
    wide = make_png_declaring(tmp_path / "wide.png", 9000, 9000)  # 243 MB
    print(f"\n20000x20000 PNG: {bomb.stat().st_size:,} bytes on disk; 9000x9000 PNG: {wide.stat().st_size:,}")
    resolve_media(pairs(candidate_image=[str(make_image(tmp_path / "small.png"))]), MediaSpec())  # warm up
    reset_peak_resident()
    before = status_bytes("VmRSS")
    by_pixels = resolve_media(pairs(candidate_image=[str(bomb)]), MediaSpec())
    by_bytes = resolve_media(
        pairs(candidate_image=[str(wide)]), MediaSpec(max_image_pixels=10**8, max_decoded_bytes=100_000_000)
    )
    grew = status_bytes("VmHWM") - before
    print(f"peak resident set grew by {grew / 1e6:.1f} MB while refusing them")
    assert bomb.stat().st_size < 100_000
    (reason,) = errors_of(by_pixels)
    assert "over the 50,000,000 pixel cap" in reason and "400000000 pixels" in reason
    assert errors_of(by_bytes) == [
        f"candidate_image '{wide}': 9000x9000 image decodes to 243 MB, over the 100 MB decoded-size cap"
    ]
    assert grew < 50_000_000  # decoding either would have taken 243 MB or more


def test_decoded_size_caps_for_audio_and_video(tmp_path):
    wav = make_wav(tmp_path / "four.wav", seconds=4.0)
    mp4 = make_mp4(tmp_path / "v.mp4", seconds=6, rate=4)  # 24 frames of 64x64
    spec = MediaSpec(max_decoded_bytes=200_000)
    out = resolve_media(pairs(candidate_audio=[str(wav)], candidate_video=[str(mp4)]), spec)
    (reason,) = errors_of(out)  # the row fails on its first column
    assert (
        reason
        == f"candidate_audio '{wav}': 4.0 s of audio decodes to 256 kB, over the 200 kB decoded-size cap"
    )
    out = resolve_media(pairs(candidate_video=[str(mp4)]), spec)
    assert errors_of(out) == [
        f"candidate_video '{mp4}': a 24-frame 64x64 video decodes to 294.9 kB, over the 200 kB decoded-size cap"
    ]


def test_audio_whose_header_understates_its_length_is_decoded_only_up_to_the_cap(tmp_path):
    mp3 = make_mp3_with_short_header(tmp_path / "long.mp3", seconds=20.0)
    from torchcodec.decoders import AudioDecoder

    claimed = AudioDecoder(mp3.read_bytes()).metadata.duration_seconds
    assert claimed is not None and claimed < 10  # the header's estimate; the clip plays 20 s
    result = decode("audio", mp3.read_bytes(), MediaSpec(max_audio_seconds=10.0))
    assert str(result) == (f"more than 10 s of audio, over the 10 s cap; its header says {claimed:.1f} s")


def test_payloads_are_the_bytes_np_save_writes(tmp_path):
    """Payloads are written straight into the block's buffers: they must still be plain `.npy` files."""
    png, wav, mp4 = make_image(tmp_path / "a.png"), make_wav(tmp_path / "a.wav"), make_mp4(tmp_path / "a.mp4")
    out = resolve_media(
        pairs(query_image=[str(png)], candidate_audio=[str(wav)], candidate_video=[str(mp4)]), MediaSpec()
    )
    for column, path, modality in (
        ("query_image", png, "image"),
        ("candidate_audio", wav, "audio"),
        ("candidate_video", mp4, "video"),
    ):
        (payload,) = out.column(c.media_payload_column(column)).to_pylist()
        assert payload == encode_payload(modality, decode(modality, path.read_bytes(), MediaSpec()))


# ------------------------------------------------------------------------------------- block budget

IMAGES = 40
SIZE = (1000, 700)  # 2.1 MB decoded each, 84 MB for the block
BUDGET = 16_000_000


def decoded_size(i: int) -> int:
    return SIZE[0] * (SIZE[1] + i) * 3


@pytest.fixture(scope="module")
def medium_images(tmp_path_factory):
    """40 distinct PNGs of 1000x700..739 (2.1 MB each decoded, 85 MB together)."""
    d = tmp_path_factory.mktemp("medium")
    colours = ["red", "green", "blue", "yellow", "purple", "orange"]
    return [make_image(d / f"m{i}.png", (SIZE[0], SIZE[1] + i), colours[i % 6]) for i in range(IMAGES)]


def test_a_block_over_the_budget_comes_out_as_several_smaller_blocks(medium_images):
    refs = [str(p) for p in medium_images]
    query = refs[0]  # one query image shared by every row: carried from block to block
    table = pairs(query_image=[query] * len(refs), candidate_image=refs[::-1])
    spec = MediaSpec(media_block_bytes=BUDGET, max_decoded_bytes=BUDGET // 2, fetch_threads=4)
    blocks = list(resolve_media_blocks(table, spec))
    payloads = [c.media_payload_column("query_image"), c.media_payload_column("candidate_image")]
    held = [sum(b.column(p).chunk(0).dictionary.nbytes for p in payloads) for b in blocks]
    print(f"\n{len(blocks)} output blocks, rows {[b.num_rows for b in blocks]}, payload bytes {held}")
    assert len(blocks) >= 5  # 85 MB of candidates under a 16 MB budget
    assert max(held) <= BUDGET
    out = pa.concat_tables(blocks)
    assert out.column(c.CANDIDATE_ID).to_pylist() == table.column(c.CANDIDATE_ID).to_pylist()  # order kept
    assert errors_of(out) == [None] * len(refs)
    images = payload_inputs("image", out.column(c.media_payload_column("candidate_image")))
    for image, path in zip(images, refs[::-1], strict=True):
        np.testing.assert_array_equal(np.asarray(image), np.asarray(Image.open(path).convert("RGB")))
    queries = payload_inputs("image", out.column(c.media_payload_column("query_image")))
    assert all(np.array_equal(np.asarray(q), np.asarray(queries[0])) for q in queries)


MEASURE = textwrap.dedent(
    """
    import gc, json, sys, tracemalloc
    import pyarrow as pa
    from actors.media.loader import MediaSpec, resolve_media_blocks
    from schemas import columns as c

    refs, budget = json.loads(sys.argv[1]), int(sys.argv[2])
    n = len(refs)
    table = pa.table({c.QUERY_ID: ["q"] * n, c.CANDIDATE_ID: [f"d{i}" for i in range(n)], "candidate_image": refs,
                      c.ROW_ERROR: pa.nulls(n, pa.string()), c.ROW_STAGE: pa.nulls(n, pa.string())})
    spec = MediaSpec(media_block_bytes=budget, max_decoded_bytes=8_000_000, fetch_threads=4)
    list(resolve_media_blocks(table[:1], spec))  # warm up: imports, decoders
    gc.collect()

    def status(field):  # kB figures of /proc/self/status
        line = next(l for l in open("/proc/self/status") if l.startswith(field + ":"))
        return int(line.split()[1]) * 1024

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident set (VmHWM) to the current one
    rss_before = status("VmRSS")
    tracemalloc.start()
    blocks = 0
    for block in resolve_media_blocks(table, spec):  # each block dropped once taken, as Ray ships it off
        blocks += 1
        del block
    python_peak = tracemalloc.get_traced_memory()[1]
    rss_peak = status("VmHWM")
    print(json.dumps({"blocks": blocks, "python_peak": python_peak, "rss_growth": rss_peak - rss_before}))
    """
)


def measure(refs: list[str], budget: int) -> dict:
    """Peak memory of the media stage on one block, in a fresh process: how far its resident set grew
    above where it stood before the block (everything the stage's process holds: fetched bytes, the decoded
    arrays the decoding child sends, the payload buffers; Pillow's pixels are the child's), and tracemalloc's
    peak of the Python allocations among them."""
    run = subprocess.run(
        [sys.executable, "-c", MEASURE, json.dumps(refs), str(budget)],
        capture_output=True,
        text=True,
        check=True,
        cwd=os.getcwd(),
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_peak_memory_of_a_block_stays_under_the_budget_plus_a_margin(medium_images):
    refs = [str(p) for p in medium_images]
    decoded = sum(decoded_size(i) for i in range(IMAGES))
    encoded = max(p.stat().st_size for p in medium_images)
    # The margin: the fetch window (4 encoded files waiting to be decoded), one image on its way into the
    # block (the decoding child's reply and its copy into the block, with room for one more: 3 x 2.2 MB;
    # Pillow's pixels are the child's, not counted here) and 8 MB for the allocators' own slack and table
    # metadata.
    margin = 4 * encoded + 3 * decoded_size(IMAGES) + 8_000_000
    bounded = measure(refs, BUDGET)
    unbounded = measure(refs, 128_000_000)
    for name, m in (("16 MB budget", bounded), ("128 MB budget", unbounded)):
        print(
            f"\n{name}: {m['blocks']} output blocks; peak resident growth {m['rss_growth'] / 1e6:.1f} MB "
            f"(Python allocations {m['python_peak'] / 1e6:.1f} MB); decoded payload {decoded / 1e6:.1f} MB"
        )
    print(f"budget + margin = {(BUDGET + margin) / 1e6:.1f} MB")
    assert bounded["blocks"] >= 5 and unbounded["blocks"] == 1
    assert bounded["rss_growth"] <= BUDGET + margin
    # The same block without a budget holds all of it at once (about that much: decoding is the child's).
    assert unbounded["rss_growth"] > 0.9 * decoded


# ------------------------------------------------------------------------------ not regular files


def test_local_references_must_be_regular_files(tmp_path):
    image = make_image(tmp_path / "a.png")
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    link = tmp_path / "link.png"
    link.symlink_to(fifo)
    refs = [str(fifo), f"file://{fifo}", str(link), "/dev/zero", str(tmp_path), str(image)]
    out = resolve_media(pairs(candidate_image=refs), MediaSpec(timeout_s=5.0))
    assert errors_of(out) == [
        f"candidate_image '{refs[0]}': is a FIFO (named pipe), not a regular file",
        f"candidate_image '{refs[1]}': is a FIFO (named pipe), not a regular file",
        f"candidate_image '{refs[2]}': is a FIFO (named pipe), not a regular file",
        "candidate_image '/dev/zero': is a character device, not a regular file",
        f"candidate_image '{tmp_path}': is a directory, not a file",
        None,
    ]
    payload = out.column(c.media_payload_column("candidate_image"))[5].as_py()
    assert decode_payload("image", payload).shape == (40, 60, 3)  # the regular file next to them is read
