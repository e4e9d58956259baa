"""Decoding in a child process, without Ray: the child's results equal the in-process decoder's; a crashing
or hanging decoder (test faults, RERANK_TEST_DECODE_FAULTS) and a real video over a tiny deadline become
that reference's error, and the next decode gets a fresh child; the child never outlives its parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from actors.media.codec import payload_inputs
from actors.media.decode import decode
from actors.media.loader import resolve_media
from actors.media.sandbox import CRASH, FAULTS_ENV, HANG, SANDBOX
from actors.media.spec import MediaError, MediaSpec
from schemas import columns as c
from schemas.settings import SettingError
from tests.media_files import make_corrupt, make_image, make_mp4, make_wav
from tests.unit.actors.media.test_loader import errors_of, pairs_table

SPEC = MediaSpec(timeout_s=2.0)
KILL_S = 3.0  # what killing and reaping a child may add to a deadline, on a loaded machine


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("sandbox")
    return {
        "png": make_image(root / "a.png", (60, 40), "red"),
        "jpg": make_image(root / "c.jpg", (64, 48), "green"),
        "wav": make_wav(root / "a.wav", seconds=1.5, rate=44100, channels=2),
        "mp4": make_mp4(root / "v.mp4", seconds=2, rate=4),
        # 300 frames of 320x240: far more than a hundredth of a second to decode
        "long_mp4": make_mp4(root / "long.mp4", seconds=30, size="320x240", rate=10),
        "corrupt_png": make_corrupt(root / "corrupt.png", like=root / "a.png"),
        "dir": root,
    }


@pytest.fixture
def faults(monkeypatch):
    """A fresh child that honours the test faults (the child reads its environment when it starts)."""
    SANDBOX.close()
    monkeypatch.setenv(FAULTS_ENV, "1")
    yield
    SANDBOX.close()


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_child_decodes_exactly_as_in_process(media):
    for modality, key in [("image", "png"), ("image", "jpg"), ("audio", "wav"), ("video", "mp4")]:
        data = media[key].read_bytes()
        got, want = SANDBOX.decode(modality, data, SPEC), decode(modality, data, SPEC)
        assert got.dtype == want.dtype and np.array_equal(got, want), key
    # A reference the decoder refuses gets the in-process decoder's message.
    corrupt = media["corrupt_png"].read_bytes()
    got, want = SANDBOX.decode("image", corrupt, SPEC), decode("image", corrupt, SPEC)
    assert isinstance(got, MediaError) and str(got) == str(want)
    # So does one over a cap, checked in the child from the header.
    capped = MediaSpec(max_image_pixels=1000)
    assert str(SANDBOX.decode("image", media["png"].read_bytes(), capped)) == str(
        decode("image", media["png"].read_bytes(), capped)
    )


def test_a_crash_is_that_references_error_and_the_next_decode_gets_a_fresh_child(media, faults):
    png = media["png"].read_bytes()
    assert isinstance(SANDBOX.decode("image", png, SPEC), np.ndarray)
    first = SANDBOX.pid
    result = SANDBOX.decode("image", CRASH + b" as if FFmpeg segfaulted", SPEC)
    assert isinstance(result, MediaError)
    assert str(result) == "the decoder crashed twice (killed by SIGABRT)"
    assert SANDBOX.pid is None and gone(first)  # reaped, not left as a zombie
    np.testing.assert_array_equal(SANDBOX.decode("image", png, SPEC), decode("image", png, SPEC))
    assert SANDBOX.pid not in (None, first)


def test_a_hanging_decoder_is_killed_at_the_deadline(media, faults):
    spec = MediaSpec(decode_timeout_s=0.5)
    png = media["png"].read_bytes()
    assert isinstance(SANDBOX.decode("image", png, spec), np.ndarray)  # a started child: time the decode only
    hung = SANDBOX.pid
    began = time.monotonic()
    result = SANDBOX.decode("image", HANG + b"\0" * 1000, spec)
    elapsed = time.monotonic() - began
    assert str(result) == "decoding took longer than 0.5 s"
    assert 0.5 <= elapsed < 0.5 + KILL_S
    assert gone(hung)
    assert isinstance(SANDBOX.decode("image", png, spec), np.ndarray)


class Cancelled(BaseException):
    """As Ray raises in a task it cancels."""


def test_a_decode_cut_short_ends_the_child_so_the_next_one_is_not_out_of_step(media, faults):
    png = media["png"].read_bytes()
    assert isinstance(SANDBOX.decode("image", png, SPEC), np.ndarray)
    busy = SANDBOX.pid

    def cancel(*_args):
        raise Cancelled

    previous = signal.signal(signal.SIGALRM, cancel)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(Cancelled):
            SANDBOX.decode("image", HANG, MediaSpec(decode_timeout_s=30.0))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert SANDBOX.pid is None and gone(busy)
    np.testing.assert_array_equal(SANDBOX.decode("image", png, SPEC), decode("image", png, SPEC))


def test_a_real_decode_over_a_tiny_deadline_is_killed(media):
    """No fault injected: FFmpeg itself decoding 300 frames cannot finish in a hundredth of a second."""
    spec = MediaSpec(decode_timeout_s=0.01, max_video_frames=1000)
    short = media["mp4"].read_bytes()
    assert isinstance(SANDBOX.decode("video", short, SPEC), np.ndarray)  # torchcodec loaded in the child
    began = time.monotonic()
    result = SANDBOX.decode("video", media["long_mp4"].read_bytes(), spec)
    elapsed = time.monotonic() - began
    assert str(result) == "decoding took longer than 0.01 s"
    assert elapsed < 0.01 + KILL_S
    # With time enough, the same video decodes (in a fresh child, which loads torchcodec again).
    frames = SANDBOX.decode("video", media["long_mp4"].read_bytes(), MediaSpec(max_video_frames=1000))
    assert isinstance(frames, np.ndarray) and frames.shape == (300, 3, 240, 320)


def test_one_death_of_the_decoder_is_not_the_references_fault(media):
    """The child killed from outside while decoding (as the OOM killer would for another process's memory):
    the reference is decoded again in a fresh child, and comes out whole."""
    video = media["long_mp4"].read_bytes()
    spec = MediaSpec(max_video_frames=1000)
    assert isinstance(
        SANDBOX.decode("video", media["mp4"].read_bytes(), SPEC), np.ndarray
    )  # torchcodec loaded
    first = SANDBOX.pid
    killer = threading.Timer(0.05, os.kill, (first, signal.SIGKILL))  # well inside the 300 frames' decode
    killer.start()
    frames = SANDBOX.decode("video", video, spec)
    killer.join()
    assert gone(first) and SANDBOX.pid not in (None, first)
    assert isinstance(frames, np.ndarray) and np.array_equal(frames, decode("video", video, spec))


def test_faults_are_ignored_unless_the_test_setting_is_on(monkeypatch):
    SANDBOX.close()
    monkeypatch.delenv(FAULTS_ENV, raising=False)
    result = SANDBOX.decode("image", CRASH, SPEC)
    assert str(result).startswith("cannot decode as image: UnidentifiedImageError")
    SANDBOX.close()


def test_the_child_exits_when_its_parent_closes_it(media):
    child = subprocess.Popen(
        [sys.executable, "-m", "actors.media.sandbox"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    child.stdin.close()  # as when its parent exits
    assert child.wait(timeout=30) == 0
    child.stdout.close()
    assert isinstance(SANDBOX.decode("image", media["png"].read_bytes(), SPEC), np.ndarray)
    pid = SANDBOX.pid
    SANDBOX.close()
    assert SANDBOX.pid is None and gone(pid)


def test_a_child_that_cannot_start_fails_the_task_not_the_reference(media, monkeypatch):
    SANDBOX.close()
    monkeypatch.setattr(sys, "executable", "/bin/false")  # as a broken installation
    with pytest.raises(
        RuntimeError, match=r"the media decoding child ended \(exit status 1\) before decoding"
    ):
        SANDBOX.decode("image", media["png"].read_bytes(), SPEC)
    assert SANDBOX.pid is None
    monkeypatch.undo()
    assert isinstance(SANDBOX.decode("image", media["png"].read_bytes(), SPEC), np.ndarray)


def test_the_stage_turns_crashing_and_hanging_references_into_their_error_rows(media, faults):
    crash, hang = media["dir"] / "crash.png", media["dir"] / "hang.png"
    crash.write_bytes(CRASH)
    hang.write_bytes(HANG)
    png = str(media["png"])
    table = pairs_table(candidate_image=[str(crash), str(hang), png])
    out = resolve_media(table, MediaSpec(timeout_s=2.0, decode_timeout_s=1.0))
    assert errors_of(out) == [
        f"candidate_image '{crash}': the decoder crashed twice (killed by SIGABRT)",
        f"candidate_image '{hang}': decoding took longer than 1 s",
        None,
    ]
    assert out.column(c.ROW_STAGE).to_pylist() == ["media", "media", None]
    images = payload_inputs("image", out.column(c.media_payload_column("candidate_image")))
    assert images[:2] == [None, None]
    np.testing.assert_array_equal(np.asarray(images[2]), decode("image", media["png"].read_bytes(), SPEC))


def test_decode_timeout_is_a_positive_setting():
    assert MediaSpec(decode_timeout_s=0.01).validate().decode_timeout_s == 0.01
    with pytest.raises(SettingError, match=r"decode_timeout_s: must be > 0, got 0"):
        MediaSpec(decode_timeout_s=0).validate()
