"""Real media files made in the test (PIL images, WAV via the `wave` module, MP4 and MP3 via FFmpeg, a PNG
whose header declares a huge image), and local servers that serve them: an HTTP(S) server on a loopback
address that counts its requests, with paths that hang, drip, fail, redirect and chain redirects, a TLS
certificate for it, and an S3 server (moto). Everything listens on loopback only."""

from __future__ import annotations

import contextlib
import http.server
import shutil
import ssl
import struct
import subprocess
import threading
import time
import urllib.parse
import wave
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
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


def make_png_declaring(path: Path, width: int, height: int) -> Path:
    """A valid 1-bit greyscale PNG of `width` x `height` (all black): a small file (tens of kB for
    20000 x 20000) that would decode to width x height x 3 bytes of RGB."""
    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed pixels
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    return path


def make_mp3_with_short_header(path: Path, seconds: float = 20.0) -> Path:
    """A VBR MP3 without a Xing header whose first second is loud noise and the rest silence: decoders
    estimate its duration from the first frames' bitrate, so its header claims a few seconds while it
    plays `seconds`."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise RuntimeError(
            "ffmpeg is not on PATH; install FFmpeg (apt-get install ffmpeg) to make test audio"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = f"[1]atrim=duration={seconds - 1}[s];[0][s]concat=n=2:v=0:a=1"
    cmd = [ffmpeg, "-y", "-loglevel", "error", "-f", "lavfi", "-i", "anoisesrc=d=1:c=white:a=0.9:r=16000"]
    cmd += ["-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-filter_complex", graph]
    cmd += ["-c:a", "libmp3lame", "-q:a", "0", "-write_xing", "0", str(path)]
    subprocess.run(cmd, check=True)
    return path


def make_corrupt(path: Path, like: Path | None = None) -> Path:
    """A file whose name promises media but whose bytes are a truncated header or plain text."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(like.read_bytes()[:40] if like else b"this is not media at all\n" * 4)
    return path


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a directory and records every request. `/hang/...` sleeps before answering, `/status/500`
    fails, `/redirect/<url>` redirects to `<url>` (percent-encoded), `/hops/<n>/<path>` redirects n times
    before serving `<path>`, `/drip/<n>` promises n bytes and sends one every 0.1 s until the client goes."""

    hang_s = 30.0
    server_record: Server

    def do_GET(self):
        self.server_record.requests.append({"path": self.path, "host": self.headers.get("Host")})
        if self.path.startswith("/redirect/"):
            return self._redirect(urllib.parse.unquote(self.path[len("/redirect/") :]))
        if self.path.startswith("/hops/"):
            n, rest = self.path[len("/hops/") :].split("/", 1)
            if int(n) > 0:
                return self._redirect(f"/hops/{int(n) - 1}/{rest}")
            self.path = "/" + rest
        if self.path.startswith("/hang/"):
            time.sleep(self.hang_s)
            self.send_error(504)
            return
        if self.path.startswith("/status/"):
            self.send_error(int(self.path.rsplit("/", 1)[1]))
            return
        if self.path.startswith("/drip/"):
            return self._drip(int(self.path.rsplit("/", 1)[1]))
        super().do_GET()

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.end_headers()

    def _drip(self, n: int) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(n))
        self.end_headers()
        try:
            for _ in range(n):
                self.wfile.write(b"\0")
                self.wfile.flush()
                time.sleep(0.1)
        except OSError:  # the client hung up
            self.server_record.client_left.set()

    def log_message(self, format, *args):  # quiet test output
        pass


@dataclass
class Server:
    """A running test server: its base URL, the requests it received, and whether a dripping response's
    client hung up."""

    url: str = ""
    requests: list[dict] = field(default_factory=list)
    client_left: threading.Event = field(default_factory=threading.Event)


@contextlib.contextmanager
def serve(
    root: Path, host: str = "127.0.0.1", hang_s: float = 30.0, tls: ssl.SSLContext | None = None
) -> Iterator[Server]:
    """Serve `root` on a free port of the loopback address `host` (127.0.0.1, 127.0.0.2, ...), over TLS
    with the server context `tls`; yields the Server (`url` is `http(s)://HOST:PORT`)."""
    record = Server()
    handler = type("Handler", (_Handler,), {"hang_s": hang_s, "server_record": record})
    server = http.server.ThreadingHTTPServer((host, 0), partial(handler, directory=str(root)))
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    record.url = f"{'https' if tls else 'http'}://{host}:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield record
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def http_server(root: Path, hang_s: float = 30.0) -> Iterator[str]:
    """Serve `root` on a loopback port; yields the base URL (`http://127.0.0.1:PORT`)."""
    with serve(root, hang_s=hang_s) as server:
        yield server.url


def make_tls_files(directory: Path, names: tuple[str, ...] = ("127.0.0.1",)) -> tuple[Path, ssl.SSLContext]:
    """A throwaway CA and a server certificate for `names` (IP addresses or host names) signed by it.
    Returns the CA file (for SSL_CERT_FILE, which clients' default contexts trust) and the server's
    ssl context."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def build(subject: str, key, issuer: x509.Name, issuer_key, ca: bool, san: list):
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = build("test CA", ca_key, ca_name, ca_key, True, [])
    san = []
    for name in names:
        try:
            san.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            san.append(x509.DNSName(name))
    cert = build(names[0], key, ca_name, ca_key, False, san)
    directory.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    (directory / "ca.pem").write_bytes(ca.public_bytes(pem))
    (directory / "server.pem").write_bytes(cert.public_bytes(pem) + ca.public_bytes(pem))
    (directory / "server.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "server.pem", directory / "server.key")
    return directory / "ca.pem", context


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


@contextlib.contextmanager
def s3_bucket(bucket: str) -> Iterator[str]:
    """`s3_server` with this process pointed at it (endpoint and test credentials in the environment,
    restored after) and an empty bucket on it; yields `s3://<bucket>`."""
    import os

    import s3fs

    with s3_server() as endpoint:
        env = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ENDPOINT_URL_S3": endpoint,
        }
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        s3fs.S3FileSystem.clear_instance_cache()
        try:
            s3fs.S3FileSystem().mkdir(bucket)
            yield f"s3://{bucket}"
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            s3fs.S3FileSystem.clear_instance_cache()


def closed_port() -> int:
    """A loopback port nothing listens on (connection refused)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
