"""The address policy of http(s) media, without Ray.

The policy is checked on literals of every refused class and through a stubbed resolver without
connecting anywhere; then end to end against real servers that count their requests, all on loopback
(127.0.0.1, 127.0.0.2): nothing in this file sends a packet off the machine, not even to an address that
"should" be refused.
"""

from __future__ import annotations

import socket
import threading

import pytest

from actors.media import address_policy
from actors.media.address_policy import AddressNotAllowed, ip_literal, parse_networks, refusal, resolve_vetted
from actors.media.loader import MediaSpec, fetch_bytes, resolve_media
from schemas import columns as c
from tests.media_files import make_image, make_tls_files, serve

LOOPBACK = ("127.0.0.0/8",)


def why(host: str, allow: tuple[str, ...] = ()) -> str | None:
    address = ip_literal(host)
    assert address is not None, f"{host!r} should read as an IP literal"
    return refusal(address, parse_networks(allow))


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("169.254.169.254", "address 169.254.169.254 is link-local; not allowed (see --allow-networks)"),
        ("2852039166", "address 169.254.169.254 is link-local"),  # decimal
        ("0xa9fea9fe", "address 169.254.169.254 is link-local"),  # hex
        ("127.0.0.1", "address 127.0.0.1 is loopback"),
        ("0x7f000001", "address 127.0.0.1 is loopback"),
        ("017700000001", "address 127.0.0.1 is loopback"),  # octal
        ("127.1", "address 127.0.0.1 is loopback"),  # inet_aton's short forms
        ("0x7f.0.0.1", "address 127.0.0.1 is loopback"),
        ("0177.0.0.01", "address 127.0.0.1 is loopback"),
        ("127.255.255.254", "address 127.255.255.254 is loopback"),
        ("10.0.0.1", "address 10.0.0.1 is private (RFC 1918)"),
        ("172.16.5.4", "address 172.16.5.4 is private (RFC 1918)"),
        ("192.168.1.1", "address 192.168.1.1 is private (RFC 1918)"),
        ("169.254.1.1", "address 169.254.1.1 is link-local"),
        ("100.64.0.1", "address 100.64.0.1 is shared address space (CGNAT)"),
        ("100.127.255.254", "is shared address space (CGNAT)"),
        ("224.0.0.251", "address 224.0.0.251 is multicast"),
        ("240.0.0.1", "address 240.0.0.1 is reserved"),
        ("255.255.255.255", "address 255.255.255.255 is broadcast"),
        ("0.0.0.0", "address 0.0.0.0 is unspecified"),
        ("0", "address 0.0.0.0 is unspecified"),
        ("0.1.2.3", "address 0.1.2.3 is reserved ('this network')"),
        ("192.0.2.7", "address 192.0.2.7 is reserved"),  # documentation range
        ("::1", "address ::1 is loopback"),
        ("[::1]", "address ::1 is loopback"),
        ("::", "address :: is unspecified"),
        ("[::ffff:127.0.0.1]", "address ::ffff:127.0.0.1 is IPv4-mapped IPv6 (127.0.0.1)"),
        ("::ffff:169.254.169.254", "is IPv4-mapped IPv6 (169.254.169.254)"),
        ("::ffff:8.8.8.8", "address ::ffff:8.8.8.8 is IPv4-mapped IPv6 (8.8.8.8)"),
        ("::127.0.0.1", "is IPv4-compatible IPv6 (127.0.0.1)"),
        ("64:ff9b::a9fe:a9fe", "is IPv4-translated IPv6, NAT64 (169.254.169.254)"),
        ("2002:a9fe:a9fe::1", "is 6to4 IPv6 (169.254.169.254)"),
        ("fd12:3456::1", "address fd12:3456::1 is unique-local IPv6"),
        ("fc00::1", "is unique-local IPv6"),
        ("fe80::1", "address fe80::1 is link-local"),
        ("fe80::1%eth0", "is link-local"),
        ("fec0::1", "is site-local IPv6"),
        ("ff02::1", "address ff02::1 is multicast"),
        ("2001:db8::1", "address 2001:db8::1 is reserved"),
    ],
)
def test_non_public_literals_are_refused_with_their_kind(host, reason):
    got = why(host)
    assert got is not None and (got.startswith(reason) if reason.startswith("address") else reason in got), (
        got
    )
    assert got.endswith("; not allowed (see --allow-networks)")


@pytest.mark.parametrize("host", ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111", "[2a00:1450::1]"])
def test_public_literals_pass(host):
    assert why(host) is None


@pytest.mark.parametrize("host", ["images.example.com", "256.1.1.1", "1.2.3.4.5", "08", "0x", "127.0.0.1 x"])
def test_names_and_malformed_numbers_are_not_literals(host):
    assert ip_literal(host) is None  # left to the resolver, whose answers are vetted in turn


def test_allow_networks_opts_ranges_in():
    assert why("127.0.0.1", ("127.0.0.1/32",)) is None
    assert why("127.0.0.2", ("127.0.0.1/32",)).startswith("address 127.0.0.2 is loopback")
    assert why("2130706433", ("127.0.0.0/8",)) is None
    assert why("10.20.3.4", ("10.20.0.0/16",)) is None
    assert why("10.21.3.4", ("10.20.0.0/16",)) is not None
    assert why("::ffff:127.0.0.1", ("127.0.0.0/8",)) is None  # the IPv6 form of an allowed address
    assert why("::1", ("127.0.0.0/8",)) is not None
    assert why("::1", ("::1/128",)) is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (("nope",), "allow_networks: 'nope' is not a CIDR range"),
        (("10.0.0.1/8",), "allow_networks: '10.0.0.1/8' is not a CIDR range (10.0.0.1/8 has host bits set)"),
    ],
)
def test_bad_networks_fail_validation_naming_the_value(value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        MediaSpec(allow_networks=value).validate()


# ---------------------------------------------------------------------------------- stubbed resolver


@pytest.fixture
def resolver(monkeypatch):
    """Replace the resolver the policy calls: {name: [addresses]}; records each name it was asked."""
    answers: dict[str, list[str]] = {}
    asked: list[str] = []

    def getaddrinfo(host, port, *args, **kwargs):
        asked.append(host)
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        infos = []
        for address in answers[host]:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            sockaddr = (address, port, 0, 0) if family == socket.AF_INET6 else (address, port)
            infos.append((family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr))
        return infos

    monkeypatch.setattr(address_policy.socket, "getaddrinfo", getaddrinfo)
    return answers, asked


def test_every_resolved_address_is_vetted(resolver):
    answers, asked = resolver
    answers["cdn.example"] = ["93.184.216.34", "2606:2800:220:1::1"]
    answers["mixed.example"] = ["93.184.216.34", "10.0.0.5"]
    answers["metadata.example"] = ["169.254.169.254"]
    answers["mapped.example"] = ["::ffff:127.0.0.1"]
    assert resolve_vetted("cdn.example", 443) == [
        (socket.AF_INET, ("93.184.216.34", 443)),
        (socket.AF_INET6, ("2606:2800:220:1::1", 443, 0, 0)),
    ]
    with pytest.raises(AddressNotAllowed, match=r"address 10\.0\.0\.5 of 'mixed.example' is private"):
        resolve_vetted("mixed.example", 80)
    with pytest.raises(AddressNotAllowed, match=r"169\.254\.169\.254 of 'metadata.example' is link-local"):
        resolve_vetted("metadata.example", 80)
    with pytest.raises(AddressNotAllowed, match=r"IPv4-mapped IPv6 \(127\.0\.0\.1\)"):
        resolve_vetted("mapped.example", 80)
    with pytest.raises(socket.gaierror):
        resolve_vetted("nowhere.example", 80)
    asked.clear()
    assert resolve_vetted("2852039166", 80, parse_networks(["169.254.0.0/16"])) == [
        (socket.AF_INET, ("169.254.169.254", 80))
    ]
    assert asked == []  # a numeric spelling never reaches the resolver


def test_a_name_is_resolved_once_and_the_vetted_address_is_the_one_connected(tmp_path, resolver):
    """DNS rebinding: the stub answers 127.0.0.1 (allowed here) first and 127.0.0.2 (not allowed) after.
    The fetch asks once and connects to what it vetted; the Host header still carries the name."""
    answers, asked = resolver
    make_image(tmp_path / "a.png")
    with serve(tmp_path) as server:
        port = server.url.rsplit(":", 1)[1]
        answers["media.test"] = ["127.0.0.1"]
        real = address_policy.socket.getaddrinfo

        def rebinding(host, *args, **kwargs):
            result = real(host, *args, **kwargs)
            answers["media.test"] = ["127.0.0.2"]  # what a rebinding server answers next
            return result

        address_policy.socket.getaddrinfo = rebinding
        data = fetch_bytes(f"http://media.test:{port}/a.png", MediaSpec(allow_networks=("127.0.0.1/32",)))
    assert data == (tmp_path / "a.png").read_bytes()
    assert asked == ["media.test"]
    assert server.requests == [{"path": "/a.png", "host": f"media.test:{port}"}]


# ---------------------------------------------------------------------- real servers, loopback only


@pytest.fixture
def site(tmp_path):
    make_image(tmp_path / "a.png", (60, 40), "red")
    return tmp_path


def resolve_one(ref: str, spec: MediaSpec) -> str | None:
    """The error of a one-row block referencing `ref` as a candidate image (None: it decoded)."""
    table = resolve_media(_pairs([ref]), spec)
    return table.column(c.ROW_ERROR)[0].as_py()


def _pairs(refs: list[str]):
    import pyarrow as pa

    n = len(refs)
    return pa.table(
        {
            c.QUERY_ID: [f"q{i}" for i in range(n)],
            c.CANDIDATE_ID: [f"d{i}" for i in range(n)],
            "candidate_image": refs,
            c.ROW_ERROR: pa.nulls(n, pa.string()),
            c.ROW_STAGE: pa.nulls(n, pa.string()),
        }
    )


def test_loopback_is_refused_by_default_and_the_server_sees_nothing(site):
    with serve(site) as server:
        port = server.url.rsplit(":", 1)[1]
        refs = [
            f"{server.url}/a.png",
            f"http://2130706433:{port}/a.png",  # 127.0.0.1 in decimal
            f"http://0x7f000001:{port}/a.png",
            f"http://017700000001:{port}/a.png",
            f"http://127.1:{port}/a.png",
            f"http://[::ffff:127.0.0.1]:{port}/a.png",
        ]
        errors = [resolve_one(ref, MediaSpec(timeout_s=2.0)) for ref in refs]
        assert server.requests == []
        scored = resolve_one(f"http://2130706433:{port}/a.png", MediaSpec(allow_networks=("127.0.0.1/32",)))
        assert scored is None and len(server.requests) == 1  # the same spelling, once allowed, reaches it
    for ref, error in zip(refs[:5], errors[:5], strict=True):
        assert (
            error
            == f"candidate_image '{ref}': address 127.0.0.1 is loopback; not allowed (see --allow-networks)"
        )
    assert errors[5].endswith(
        "address ::ffff:127.0.0.1 is IPv4-mapped IPv6 (127.0.0.1); not allowed (see --allow-networks)"
    )


def test_allowed_server_is_fetched_and_a_redirect_to_another_address_is_refused(site):
    allow = MediaSpec(timeout_s=2.0, allow_networks=("127.0.0.1/32",))
    with serve(site) as first, serve(site, host="127.0.0.2") as second:
        assert resolve_one(f"{first.url}/a.png", allow) is None
        to_second = f"{second.url}/a.png"
        ref = f"{first.url}/redirect/{to_second.replace(':', '%3A').replace('/', '%2F')}"
        error = resolve_one(ref, allow)
        assert error == (
            f"candidate_image '{ref}': redirected to '{to_second}': address 127.0.0.2 is loopback; "
            "not allowed (see --allow-networks)"
        )
        assert second.requests == []
        assert resolve_one(ref, MediaSpec(allow_networks=LOOPBACK)) is None  # both allowed: followed
        assert len(second.requests) == 1


def test_at_most_five_redirects(site):
    spec = MediaSpec(timeout_s=2.0, allow_networks=LOOPBACK)
    with serve(site) as server:
        assert resolve_one(f"{server.url}/hops/5/a.png", spec) is None
        error = resolve_one(f"{server.url}/hops/6/a.png", spec)
    assert error.endswith(f"more than 5 redirects, last to '{server.url}/hops/0/a.png'")


def test_https_with_the_name_kept_for_sni_and_no_downgrade_to_http(site, tmp_path, resolver, monkeypatch):
    """A TLS server on loopback whose certificate names `media.test` and 127.0.0.1, trusted through
    SSL_CERT_FILE: the fetch connects to the vetted address and verifies the certificate for the name."""
    answers, _ = resolver
    answers["media.test"] = ["127.0.0.1"]
    ca, tls = make_tls_files(tmp_path / "tls", ("media.test", "127.0.0.1"))
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    spec = MediaSpec(timeout_s=5.0, allow_networks=("127.0.0.1/32",))
    with serve(site, tls=tls) as secure, serve(site) as plain:
        port = secure.url.rsplit(":", 1)[1]
        assert fetch_bytes(f"https://media.test:{port}/a.png", spec) == (site / "a.png").read_bytes()
        assert fetch_bytes(f"{secure.url}/a.png", spec) == (site / "a.png").read_bytes()
        to_plain = f"{plain.url}/a.png"
        ref = f"{secure.url}/redirect/{to_plain.replace(':', '%3A').replace('/', '%2F')}"
        error = resolve_one(ref, spec)
        assert plain.requests == []
    assert error == (
        f"candidate_image '{ref}': redirected from https to '{to_plain}'; a downgrade to http is not followed"
    )
    assert [r["host"] for r in secure.requests[:2]] == [f"media.test:{port}", f"127.0.0.1:{port}"]


def test_a_slow_drip_is_abandoned_at_the_deadline_with_no_thread_left_behind(site):
    with serve(site) as server:
        before = set(threading.enumerate())
        ref = f"{server.url}/drip/1000"  # 1000 bytes, one every 0.1 s
        error = resolve_one(ref, MediaSpec(timeout_s=1.0, allow_networks=LOOPBACK))
        assert server.client_left.wait(10), "the fetch never closed its connection"
        left = {
            t for t in set(threading.enumerate()) - before if "process_request_thread" not in t.name
        }  # the server's own handler threads excepted
    assert error == f"candidate_image '{ref}': timed out after 1.0 s"
    assert not left, f"threads left behind: {sorted(t.name for t in left)}"
