"""The container allow-list in front of FFmpeg (`actors.media.containers`): every container FFmpeg writes
for the allowed formats (and the tests' own media files) is accepted and decodes; manifests, playlists and
other bytes are refused with a message that names them, before FFmpeg sees them, so nothing they name is
opened. Listeners are on loopback (127.0.0.2) only."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

from actors.media import containers
from actors.media.containers import check_container, ffmpeg_demuxer, sniff
from actors.media.decode import decode
from actors.media.spec import MediaError, MediaSpec
from tests.media_files import make_mp3_with_short_header, make_mp4, make_wav

VIDEO = "-f lavfi -i testsrc=duration=1:size=64x64:rate=4 -pix_fmt yuv420p"
AUDIO = "-f lavfi -i sine=duration=1:sample_rate=16000"
VIDEOS = {  # file name: (FFmpeg output options, the container sniffed)
    "clip.mp4": ("", "MP4/MOV"),
    "clip.mov": ("", "MP4/MOV"),
    "clip.mkv": ("", "Matroska/WebM"),
    "clip.webm": ("-c:v libvpx", "Matroska/WebM"),
    "clip.avi": ("", "AVI"),
    "clip.ts": ("", "MPEG-TS"),
    "clip.m2ts": ("-f mpegts -mpegts_m2ts_mode 1", "MPEG-TS"),
    "clip.ogv": ("-c:v libtheora", "Ogg"),
    "clip.flv": ("", "FLV"),
}
AUDIOS = {
    "tone.wav": ("", "WAV"),
    "tone.flac": ("", "FLAC"),
    "tone.mp3": ("", "MP3"),  # FFmpeg writes an ID3v2 tag first
    "bare.mp3": ("-id3v2_version 0", "MP3"),
    "tone.aac": ("-c:a aac", "AAC (ADTS)"),
    "tone.ogg": ("-c:a libvorbis", "Ogg"),
    "tone.opus": ("-c:a libopus", "Ogg"),
    "tone.m4a": ("-c:a aac", "MP4/MOV"),
    "tone.webm": ("-c:a libopus", "Matroska/WebM"),
    "tone.mka": ("", "Matroska/WebM"),
}
SPEC = MediaSpec()
LISTENER = "127.0.0.2"
needs_ffmpeg_probe = pytest.mark.skipif(
    containers._libavformat() is None, reason="FFmpeg's libavformat is not reachable here"
)


def ffmpeg(path: Path, source: str, options: str) -> Path:
    binary = shutil.which("ffmpeg")
    if binary is None:
        pytest.skip("ffmpeg is not on PATH")
    path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [binary, "-y", "-loglevel", "error", *source.split(), *options.split(), str(path)]
    subprocess.run(cmd, check=True)
    return path


@pytest.mark.parametrize("name", VIDEOS)
def test_videos_ffmpeg_writes_are_accepted_and_decode(tmp_path, name):
    options, container = VIDEOS[name]
    data = ffmpeg(tmp_path / name, VIDEO, options).read_bytes()
    assert check_container("video", data) == container
    frames = decode("video", data, SPEC)
    if container == "MPEG-TS" and isinstance(frames, MediaError):  # accepted, but torchcodec's exact
        assert "container" not in str(frames)  # frame count overshoots on the TS FFmpeg 5.1 writes
        return
    assert not isinstance(frames, MediaError), frames
    assert frames.shape[1:] == (3, 64, 64) and frames.shape[0] >= 3


@pytest.mark.parametrize("name", AUDIOS)
def test_audio_ffmpeg_writes_is_accepted_and_decodes(tmp_path, name):
    options, container = AUDIOS[name]
    data = ffmpeg(tmp_path / name, AUDIO, options).read_bytes()
    assert check_container("audio", data) == container
    samples = decode("audio", data, SPEC)
    assert not isinstance(samples, MediaError), samples
    assert 0.9 < len(samples) / 16000 < 1.2


def test_the_tests_own_media_files_are_accepted(tmp_path):
    assert check_container("video", make_mp4(tmp_path / "clip.mp4").read_bytes()) == "MP4/MOV"
    assert check_container("audio", make_wav(tmp_path / "mono.wav").read_bytes()) == "WAV"
    stereo = make_wav(tmp_path / "stereo.wav", rate=44100, channels=2)
    assert check_container("audio", stereo.read_bytes()) == "WAV"
    short_header = make_mp3_with_short_header(tmp_path / "long.mp3", seconds=3.0)
    assert check_container("audio", short_header.read_bytes()) == "MP3"


MPD = (
    b'<?xml version="1.0" encoding="utf-8"?>\n'
    b'<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" mediaPresentationDuration="PT2S"'
    b' profiles="urn:mpeg:dash:profile:isoff-on-demand:2011" minBufferTime="PT1S"><Period>'
    b'<AdaptationSet mimeType="MIME"><Representation id="1" bandwidth="1000" codecs="CODEC">'
    b'<BaseURL>http://HOST/media</BaseURL><SegmentBase indexRange="0-100"/></Representation>'
    b"</AdaptationSet></Period></MPD>\n"
)
HLS = b"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nhttp://HOST/segment.ts\n#EXT-X-ENDLIST\n"
FFCONCAT = b"ffconcat version 1.0\nfile 'http://HOST/part.wav'\nfile '/etc/passwd'\n"
SDP = b"v=0\no=- 0 0 IN IP4 HOST\ns=stream\nc=IN IP4 HOST\nt=0 0\nm=audio 5004 RTP/AVP 0\n"
ID3 = b"ID3\x04\x00\x00\x00\x00\x00\x00"  # an empty ID3v2 tag: FFmpeg skips it before probing
REFUSED = {  # bytes: what the message says they look like ("" when it guesses nothing)
    "dash": (MPD, "a DASH manifest"),
    "hls": (HLS, "an HLS playlist"),
    "ffconcat": (FFCONCAT, "an ffconcat script"),
    "sdp": (SDP, "an SDP session description"),
    "html": (b"<!DOCTYPE html><html><body>not found</body></html>", "an HTML page"),
    "text": (b"this is not media at all\n" * 4, "text"),
    "random": (np.random.default_rng(0).bytes(4096), ""),
    "empty": (b"", ""),
    "id3+hls": (ID3 + HLS, "an HLS playlist"),
    "id3+dash": (ID3 + MPD, "a DASH manifest"),
}


@pytest.mark.parametrize("modality", ["video", "audio"])
@pytest.mark.parametrize("name", REFUSED)
def test_manifests_playlists_and_other_bytes_are_refused_by_name(modality, name):
    data, seen = REFUSED[name]
    with pytest.raises(MediaError) as caught:
        check_container(modality, data)
    supported = ", ".join(containers.SUPPORTED[modality])
    looks = f" (looks like {seen})" if seen else ""
    want = f"cannot decode as {modality}: not a supported {modality} container{looks}; supported: {supported}"
    assert str(caught.value) == want


def test_a_container_of_the_other_modality_is_named(tmp_path):
    wav = make_wav(tmp_path / "tone.wav").read_bytes()
    with pytest.raises(MediaError, match=r"not a supported video container \(looks like WAV audio\)"):
        check_container("video", wav)
    avi = ffmpeg(tmp_path / "clip.avi", VIDEO, "").read_bytes()
    with pytest.raises(MediaError, match=r"not a supported audio container \(looks like AVI video\)"):
        check_container("audio", avi)


def test_the_allow_list_is_by_bytes_not_by_a_search_for_manifests():
    """A manifest spelled so that no search for `<MPD` finds it is still not an allowed container."""
    lowercase = MPD.replace(b"<MPD", b"<mpd").replace(b"</MPD", b"</mpd")
    assert sniff(lowercase) is None and sniff(b"  \n" + MPD) is None
    with pytest.raises(MediaError, match="not a supported video container"):
        check_container("video", lowercase)


POLYGLOTS = {  # a valid signature, then a manifest that FFmpeg's own probe prefers
    "wav": (b"RIFF\x01\x01\x01\x01WAVE" + MPD, "WAV", "dash"),
    "flac": (b"fLaC\x01\x01\x01\x01" + MPD, "FLAC", "dash"),
    "ogg": (b"OggS\x01\x01" + MPD, "Ogg", "dash"),
    "mp3": (b"\xff\xfb\x90\x64\n" + SDP, "MP3", "sdp"),
}


@needs_ffmpeg_probe
@pytest.mark.parametrize("name", POLYGLOTS)
def test_bytes_that_start_like_an_allowed_container_but_probe_as_a_manifest_are_refused(name):
    data, container, demuxer = POLYGLOTS[name]
    assert sniff(data) == container and ffmpeg_demuxer(data) == demuxer
    with pytest.raises(MediaError) as caught:
        check_container("audio", data)
    assert f"starts like {container} but FFmpeg would read it as '{demuxer}'" in str(caught.value)


@needs_ffmpeg_probe
def test_ffmpeg_probe_names_the_demuxer_torchcodec_opens(tmp_path):
    assert ffmpeg_demuxer(make_mp4(tmp_path / "clip.mp4").read_bytes()) == "mov,mp4,m4a,3gp,3g2,mj2"
    assert ffmpeg_demuxer(MPD) == "dash" and ffmpeg_demuxer(HLS) == "hls"
    assert ffmpeg_demuxer(b"") is None


@pytest.fixture
def listener():
    """A TCP listener on 127.0.0.2 that records every connection; yields (host:port, connections)."""
    server = socket.create_server((LISTENER, 0))
    seen: list[bytes] = []

    def accept():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(1.0)
                try:
                    seen.append(conn.recv(1000))
                except OSError:
                    seen.append(b"")

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"{LISTENER}:{server.getsockname()[1]}", seen
    server.close()


@pytest.mark.parametrize(
    ("modality", "mime", "codec"),
    [("video", "video/mp4", "avc1.64000a"), ("audio", "audio/mp4", "mp4a.40.2")],
)
def test_a_dash_manifest_is_refused_before_ffmpeg_opens_what_it_names(listener, modality, mime, codec):
    host, seen = listener
    manifest = MPD.replace(b"HOST", host.encode()).replace(b"MIME", mime.encode())
    result = decode(modality, manifest.replace(b"CODEC", codec.encode()), SPEC)
    assert isinstance(result, MediaError)
    assert str(result).startswith(
        f"cannot decode as {modality}: not a supported {modality} container (looks like a DASH manifest)"
    )
    assert seen == []
