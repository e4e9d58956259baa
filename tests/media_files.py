"""Real media files made in the test (PIL images, WAV via the `wave` module, MP4 via FFmpeg), and local
servers that serve them: an HTTP server with a path that hangs and one that 404s, and an S3 server (moto)."""

from __future__ import annotations

import contextlib
import http.server
import shutil
import subprocess
import threading
import time
import urllib.parse
import wave
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np


def make_image(path: Path, size: tuple[int, int] = (60, 40), colour: str = "red", quality: int = 90) -> Path:
    """A PNG or JPEG (by suffix) of `size` (width, height): a coloured square on a gradient."""
    from PIL import Image, ImageDraw

    width, height = size
    x = np.linspace(0, 255, width, dtype=np.uint8)
    pixels = np.stack([np.tile(x, (height, 1))] * 3, axis=-1)
    image = Image.fromarray(pixels)
    ImageDraw.Draw(image).rectangle((width // 4, height // 4, 3 * width // 4, 3 * height // 4), fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **({"quality": quality} if path.suffix.lower() in (".jpg", ".jpeg") else {}))
    return path


def make_wav(
    path: Path, seconds: float = 1.5, rate: int = 16000, channels: int = 1, freq: float = 440.0
) -> Path:
    """A 16-bit PCM sine WAV."""
    t = np.arange(int(seconds * rate)) / rate
    mono = (0.5 * np.sin(2 * np.pi * freq * t) * 32767).astype(np.int16)
    frames = np.repeat(mono[:, None], channels, axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames.tobytes())
    return path


def make_mp4(
    path: Path, seconds: float = 2, size: str = "64x64", rate: int = 4, pattern: str = "testsrc"
) -> Path:
    """An H.264 MP4 from FFmpeg's test sources (`seconds * rate` frames)."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise RuntimeError(
            "ffmpeg is not on PATH; install FFmpeg (apt-get install ffmpeg) to make test videos"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    source = f"{pattern}=duration={seconds}:size={size}:rate={rate}"
    cmd = [ffmpeg, "-y", "-loglevel", "error", "-f", "lavfi", "-i", source, "-pix_fmt", "yuv420p", str(path)]
    subprocess.run(cmd, check=True)
    return path


def make_corrupt(path: Path, like: Path | None = None) -> Path:
    """A file whose name promises media but whose bytes are a truncated header or plain text."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(like.read_bytes()[:40] if like else b"this is not media at all\n" * 4)
    return path


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a directory; `/hang/...` sleeps before answering, `/status/500` fails, `/redirect/<url>`
    redirects to `<url>` (percent-encoded)."""

    hang_s = 30.0

    def do_GET(self):
        if self.path.startswith("/redirect/"):
            self.send_response(302)
            self.send_header("Location", urllib.parse.unquote(self.path[len("/redirect/") :]))
            self.end_headers()
            return
        if self.path.startswith("/hang/"):
            time.sleep(self.hang_s)
            self.send_error(504)
            return
        if self.path.startswith("/status/"):
            self.send_error(int(self.path.rsplit("/", 1)[1]))
            return
        super().do_GET()

    def log_message(self, format, *args):  # quiet test output
        pass


@contextlib.contextmanager
def http_server(root: Path, hang_s: float = 30.0) -> Iterator[str]:
    """Serve `root` on a loopback port; yields the base URL (`http://127.0.0.1:PORT`)."""
    handler = type("Handler", (_Handler,), {"hang_s": hang_s})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(root)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def s3_server() -> Iterator[str]:
    """An S3-compatible server (moto) on a loopback port; yields its endpoint URL. Any credentials work."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def closed_port() -> int:
    """A loopback port nothing listens on (connection refused)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
