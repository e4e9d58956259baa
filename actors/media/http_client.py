"""Fetching one http(s) reference under the address policy (`actors.media.address_policy`) and a deadline.

Every hop is checked before anything is sent: its scheme must be allowed, its host is resolved once and
every address it resolves to vetted, and the connection is made to those vetted addresses (the name is
kept for the Host header, TLS SNI and certificate checks), so DNS cannot answer differently between the
check and the connection. Redirects are followed here, not by urllib: at most `MAX_REDIRECTS`, never from
https to http, each hop vetted like the first. Proxy variables (HTTP_PROXY, ...) are not used: a proxy
would connect on the worker's behalf to addresses the policy never saw.

Every send and receive is bounded by the fetch's deadline (the socket timeout is re-armed with the time
left before each one), so a server that drips a byte at a time cannot keep the fetch, its thread or its
socket alive past the deadline.
"""

from __future__ import annotations

import http.client
import math
import socket
import ssl
import time
import urllib.parse

from actors.media.address_policy import AddressNotAllowed, resolve_vetted
from actors.media.spec import MediaError, MediaSpec, scheme_of

MAX_REDIRECTS = 5
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
USER_AGENT = "ray-rerank-media/1"


def _time_left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the fetch's deadline passed")
    return left


class _DeadlineSocket(socket.socket):
    """A TCP socket whose every send and receive ends by `deadline` (time.monotonic())."""

    deadline = math.inf

    def recv_into(self, buffer, nbytes=0, flags=0):
        self.settimeout(_time_left(self.deadline))
        return super().recv_into(buffer, nbytes, flags)

    def recv(self, bufsize, flags=0):
        self.settimeout(_time_left(self.deadline))
        return super().recv(bufsize, flags)

    def sendall(self, data, flags=0):
        self.settimeout(_time_left(self.deadline))
        return super().sendall(data, flags)


class _DeadlineSSLSocket(ssl.SSLSocket):
    """The TLS counterpart of `_DeadlineSocket` (the handshake itself is bounded by the timeout set before
    it: CPython applies a socket timeout to the whole handshake)."""

    deadline = math.inf

    def recv_into(self, buffer, nbytes=None, flags=0):
        self.settimeout(_time_left(self.deadline))
        return super().recv_into(buffer, nbytes, flags)

    def recv(self, buflen=1024, flags=0):
        self.settimeout(_time_left(self.deadline))
        return super().recv(buflen, flags)

    def sendall(self, data, flags=0):
        self.settimeout(_time_left(self.deadline))
        return super().sendall(data, flags)


def _connect(targets: list[tuple[int, tuple]], deadline: float) -> socket.socket:
    """A connected socket to the first of the vetted `targets` that accepts."""
    error: OSError | None = None
    for family, sockaddr in targets:
        sock = _DeadlineSocket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.deadline = deadline
        try:
            sock.settimeout(_time_left(deadline))
            sock.connect(sockaddr)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error or OSError("no address to connect to")


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection to vetted addresses of `host`; the name is never resolved again."""

    def __init__(self, host: str, port: int, targets: list[tuple[int, tuple]], deadline: float):
        super().__init__(host, port, timeout=_time_left(deadline))
        self.targets, self.deadline = targets, deadline

    def connect(self) -> None:
        self.sock = _connect(self.targets, self.deadline)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """An HTTPS connection to vetted addresses of `host`, verifying the certificate for `host` (SNI)."""

    def __init__(self, host: str, port: int, targets: list[tuple[int, tuple]], deadline: float):
        context = ssl.create_default_context()
        context.sslsocket_class = _DeadlineSSLSocket
        super().__init__(host, port, timeout=_time_left(deadline), context=context)
        self.targets, self.deadline, self.tls = targets, deadline, context

    def connect(self) -> None:
        sock = _connect(self.targets, self.deadline)
        try:
            sock.settimeout(_time_left(self.deadline))
            tls = self.tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
        tls.deadline = self.deadline
        self.sock = tls


def fetch_http(url: str, spec: MediaSpec, deadline: float, read_capped) -> bytes:
    """The body of `url` read with `read_capped(read, declared_length)`, following redirects under the
    policy. Raises MediaError with the reason (address not allowed, redirect refused, HTTP status) and lets
    socket errors through for the caller to word (timed out, unreachable)."""
    networks = spec.networks()
    for hop in range(MAX_REDIRECTS + 1):
        parts = urllib.parse.urlsplit(url)
        try:
            host, port = parts.hostname, parts.port
        except ValueError as exc:  # a port that is not a number
            raise MediaError(f"invalid URL {url!r}: {exc}") from None
        if not host:
            raise MediaError(f"invalid URL {url!r}: no host")
        port = port or (443 if parts.scheme == "https" else 80)
        try:
            targets = resolve_vetted(host, port, networks)
        except AddressNotAllowed as exc:
            raise MediaError(f"redirected to {url!r}: {exc}" if hop else str(exc)) from None
        except socket.gaierror as exc:
            raise MediaError(f"unreachable: cannot resolve {host!r} ({exc.strerror or exc})") from None
        cls = _PinnedHTTPSConnection if parts.scheme == "https" else _PinnedHTTPConnection
        conn = cls(host, port, targets, deadline)
        response = None
        try:
            path = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
            conn.request("GET", path, headers={"User-Agent": USER_AGENT})
            response = conn.getresponse()
            if response.status in REDIRECT_STATUSES:
                url = _next_hop(url, response, spec)
                continue
            if response.status in (404, 410):
                raise MediaError(f"not found (HTTP {response.status})")
            if not 200 <= response.status < 300:
                raise MediaError(f"HTTP {response.status} {response.reason}")
            length = response.getheader("Content-Length")
            declared = int(length) if length is not None and length.strip().isdigit() else None
            return read_capped(response.read1, declared)
        finally:  # the response holds the socket once the connection handed it over: close both
            if response is not None:
                response.close()
            conn.close()
    raise MediaError(f"more than {MAX_REDIRECTS} redirects, last to {url!r}")


def _next_hop(url: str, response: http.client.HTTPResponse, spec: MediaSpec) -> str:
    location = response.getheader("Location")
    if not location:
        raise MediaError(f"HTTP {response.status} redirect without a Location")
    new = urllib.parse.urljoin(url, location.strip())
    scheme = scheme_of(new)
    if scheme not in spec.allowed_schemes or scheme not in ("http", "https"):
        raise MediaError(f"redirected to {new!r}, scheme {scheme!r} not allowed")
    if scheme_of(url) == "https" and scheme == "http":
        raise MediaError(f"redirected from https to {new!r}; a downgrade to http is not followed")
    return new
