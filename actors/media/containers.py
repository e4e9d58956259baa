"""Which container a reference's audio or video bytes are, decided before FFmpeg sees them.

FFmpeg (under torchcodec) picks its demuxer from the bytes alone, and some of its demuxers open the URLs or
files the bytes name: DASH (an MPD manifest), HLS (an m3u8 playlist), concat (an ffconcat script), SDP/RTP
and more. A reference served as such a manifest would make the worker fetch what it names outside the
address policy, the size caps and the deadline. torchcodec 0.14 takes no format and no protocol whitelist
(it calls `avformat_open_input` with no options), so the bytes are decoded only when they are one of an
allow-list of containers whose demuxers read nothing but the bytes they are given:

- video: MP4/MOV, Matroska/WebM, AVI, MPEG-TS, Ogg, FLV;
- audio: WAV, FLAC, MP3, AAC (ADTS), Ogg, MP4/M4A, Matroska/WebM.

Two checks, both allow-lists: the container's signature at the start of the bytes (`sniff`; an ID3v2 tag
is skipped and what follows it checked, as FFmpeg skips it before probing and before reading); then, where
the libavformat torchcodec loaded is reachable, the demuxer FFmpeg's own probe picks for these bytes
(`ffmpeg_demuxer`, its probing loop replayed) must be one of the allowed containers' demuxers. The second
closes polyglots: bytes that start like an allowed container but that another demuxer's probe claims.
"""

from __future__ import annotations

import ctypes
import functools
import re

from actors.media.spec import MediaError

MP4, MKV, AVI, TS, OGG, FLV = "MP4/MOV", "Matroska/WebM", "AVI", "MPEG-TS", "Ogg", "FLV"
WAV, FLAC, MP3, AAC = "WAV", "FLAC", "MP3", "AAC (ADTS)"
SUPPORTED = {
    "video": (MP4, MKV, AVI, TS, OGG, FLV),
    "audio": (WAV, FLAC, MP3, AAC, OGG, MP4, MKV),
}
# FFmpeg's demuxer for each allowed container (names as libavformat 59-62 spell them).
DEMUXERS = {
    MP4: ("mov,mp4,m4a,3gp,3g2,mj2",),
    MKV: ("matroska,webm",),
    AVI: ("avi",),
    TS: ("mpegts",),
    OGG: ("ogg",),
    FLV: ("flv", "live_flv"),
    WAV: ("wav",),
    FLAC: ("flac",),
    MP3: ("mp3",),
    AAC: ("aac",),
}
# ISO base media (MP4/MOV) top-level boxes a file may start with.
_ISO_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide")
TS_PACKETS_CHECKED = 8


def check_container(modality: str, data: bytes) -> str:
    """The allowed container `data` is for `modality` ('audio' or 'video'); else raise the MediaError
    that names the problem."""
    supported = SUPPORTED[modality]
    container = sniff(data)
    if container not in supported:
        other = next((m for m, names in SUPPORTED.items() if container in names), None)
        seen = f"{container} {other}" if container else looks_like(data)
        what = f" (looks like {seen})" if seen else ""
        raise MediaError(
            f"cannot decode as {modality}: not a supported {modality} container{what}; supported: "
            + ", ".join(supported)
        )
    demuxer = ffmpeg_demuxer(data)
    allowed = {name for c in supported for name in DEMUXERS[c]}
    if demuxer is not None and demuxer not in allowed:
        raise MediaError(
            f"cannot decode as {modality}: starts like {container} but FFmpeg would read it as "
            f"'{demuxer}'; supported: " + ", ".join(supported)
        )
    if demuxer is None and _libavformat() is not None:
        raise MediaError(f"cannot decode as {modality}: FFmpeg finds no {container} stream in it")
    return container


def sniff(data: bytes) -> str | None:
    """The container whose signature `data` starts with (one of the allowed ones), or None."""
    head = data[:12]
    if len(data) >= 8 and data[4:8] in _ISO_BOXES:
        return MP4
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return MKV
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return AVI
    if head[:4] in (b"RIFF", b"RIFX") and head[8:12] == b"WAVE":
        return WAV
    if head.startswith(b"OggS"):
        return OGG
    if head.startswith(b"FLV\x01"):
        return FLV
    if head.startswith(b"fLaC"):
        return FLAC
    if _is_ts(data, 188, 0) or _is_ts(data, 192, 4):
        return TS
    if head.startswith(b"ID3"):  # an ID3v2 tag, then the audio it tags
        after = _id3_length(data)
        return sniff_tagged(data[after:]) if after is not None else None
    return sniff_tagged(data)


def sniff_tagged(data: bytes) -> str | None:
    """MP3, AAC or FLAC: the streams an ID3v2 tag may precede."""
    if data.startswith(b"fLaC"):
        return FLAC
    if len(data) >= 4 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0:
        version, layer = (data[1] >> 3) & 3, (data[1] >> 1) & 3
        if layer == 0:  # ADTS (12-bit sync): MPEG-4 or MPEG-2 AAC with a valid sampling-rate index
            return AAC if data[1] & 0xF0 == 0xF0 and (data[2] >> 2) & 0xF < 13 else None
        if version != 1 and data[2] >> 4 != 0xF and (data[2] >> 2) & 3 != 3:  # an MPEG audio frame
            return MP3
    return None


def _is_ts(data: bytes, packet: int, offset: int) -> bool:
    """MPEG-TS: a sync byte 0x47 at the start of every packet (188 bytes, or 192 for M2TS) checked."""
    count = min(TS_PACKETS_CHECKED, len(data) // packet)
    return count >= 1 and all(data[i * packet + offset] == 0x47 for i in range(count))


def _id3_length(data: bytes) -> int | None:
    """Bytes of the ID3v2 tag `data` starts with (header, body, footer), or None if it is not one."""
    if len(data) < 10 or data[3] == 0xFF or data[4] == 0xFF or any(b & 0x80 for b in data[6:10]):
        return None
    size = (data[6] << 21) | (data[7] << 14) | (data[8] << 7) | data[9]
    return 10 + size + (10 if data[5] & 0x10 else 0)


_HINTS = (  # only for the message: the decision above is an allow-list
    (re.compile(rb"^\s*(<\?xml[^>]*>\s*)?(<!--.*?-->\s*)*<(\w+:)?MPD\b", re.S), "a DASH manifest"),
    (re.compile(rb"^\s*#EXTM3U"), "an HLS playlist"),
    (re.compile(rb"^\s*ffconcat\b|^\s*file\s+\S", re.I), "an ffconcat script"),
    (re.compile(rb"^\s*v=0\s*$.*^[cm]=", re.S | re.M), "an SDP session description"),
    (re.compile(rb"^\s*(<!doctype html|<html)", re.I), "an HTML page"),
    (re.compile(rb"^\s*<"), "an XML document"),
    (re.compile(rb"^\x89PNG|^\xff\xd8\xff|^GIF8|^RIFF....WEBP", re.S), "an image"),
)


def looks_like(data: bytes) -> str | None:
    """A guess at what unsupported bytes are, for the error message ('a DASH manifest'), or None."""
    tag = _id3_length(data) if data.startswith(b"ID3") else None
    head = data[tag or 0 :][:4096].removeprefix(b"\xef\xbb\xbf")
    for pattern, name in _HINTS:
        if pattern.search(head):
            return name
    if head and all(32 <= b < 127 or b in b"\t\r\n" for b in head[:512]):
        return "text"
    return None


# FFmpeg's probing, as `av_probe_input_buffer2` does it for a custom I/O context (libavformat 59-62).
PROBE_BUF_MIN, PROBE_BUF_MAX, PROBE_SCORE_RETRY, PROBE_PADDING = 2048, 1 << 20, 25, 64


class _ProbeData(ctypes.Structure):
    _fields_ = [
        ("filename", ctypes.c_char_p),
        ("buf", ctypes.c_void_p),
        ("buf_size", ctypes.c_int),
        ("mime_type", ctypes.c_char_p),
    ]


def ffmpeg_demuxer(data: bytes) -> str | None:
    """The name of the demuxer FFmpeg would open `data` with (None: none, or libavformat unreachable)."""
    lib = _libavformat()
    if lib is None:
        return None
    probe_size, size, eof = PROBE_BUF_MIN, 0, False
    while probe_size <= PROBE_BUF_MAX and not eof:
        threshold = PROBE_SCORE_RETRY if probe_size < PROBE_BUF_MAX else 0
        read = min(len(data), probe_size) - size
        if read <= 0:  # end of the bytes: FFmpeg probes once more, taking any score
            threshold, eof = 0, True
        size += max(read, 0)
        buffer = ctypes.create_string_buffer(data[:size], size + PROBE_PADDING)  # zero padding after
        probe = _ProbeData(b"", ctypes.cast(buffer, ctypes.c_void_p), size, None)
        score = ctypes.c_int(0)
        found = lib.av_probe_input_format3(ctypes.byref(probe), 1, ctypes.byref(score))
        if found and score.value > threshold:
            return ctypes.cast(found, ctypes.POINTER(ctypes.c_char_p))[0].decode()  # AVInputFormat.name
        probe_size = min(probe_size << 1, max(PROBE_BUF_MAX, probe_size + 1))
    return None


@functools.cache
def _libavformat() -> ctypes.CDLL | None:
    """The libavformat torchcodec loaded into this process (Linux), or None where it cannot be found."""
    import torchcodec.decoders  # noqa: F401  loads torchcodec's core library and, with it, FFmpeg's

    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "/libavformat.so" in line}
    except OSError:
        return None
    if len(paths) != 1:
        return None
    lib = ctypes.CDLL(paths.pop())
    lib.av_probe_input_format3.restype = ctypes.c_void_p
    lib.av_probe_input_format3.argtypes = [
        ctypes.POINTER(_ProbeData),
        ctypes.c_int,
        ctypes.POINTER(ctypes.c_int),
    ]
    return lib
