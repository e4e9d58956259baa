"""Which network addresses a worker may fetch http(s) media from.

Corpora are often crawled: their references were written by strangers, and the workers that fetch them sit
next to the cloud's metadata service, the Ray dashboard and internal services. By default a reference may
only reach public (globally routable) addresses; loopback, RFC 1918 private, link-local (169.254.169.254),
CGNAT, unique-local and link-local IPv6, IPv4-mapped/compatible/translated IPv6, multicast, reserved and
unspecified addresses are refused with the reason. `--allow-networks CIDR,...` opts ranges back in.

The policy is applied to the addresses actually connected to: a host name is resolved once
(`resolve_vetted`), every address it resolves to is vetted, and the caller connects to those addresses
only, so a name that changes its answer between the check and the connection (DNS rebinding) cannot slip
through. Integer, octal and hex IPv4 spellings (`2852039166`, `0x7f000001`, `017700000001`, `127.1`) are
read the way the C resolver reads them before the check, and never sent to a DNS server.
"""

from __future__ import annotations

import ipaddress
import re
import socket

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

FLAG = "--allow-networks"

# (network, what it is), first match wins; "{v4}" is replaced by the IPv4 address an IPv6 form embeds.
_REFUSED: list[tuple[Network, str]] = [
    (ipaddress.ip_network(net), what)
    for net, what in (
        ("0.0.0.0/32", "unspecified"),
        ("0.0.0.0/8", "reserved ('this network')"),
        ("127.0.0.0/8", "loopback"),
        ("10.0.0.0/8", "private (RFC 1918)"),
        ("172.16.0.0/12", "private (RFC 1918)"),
        ("192.168.0.0/16", "private (RFC 1918)"),
        ("169.254.0.0/16", "link-local"),
        ("100.64.0.0/10", "shared address space (CGNAT)"),
        ("224.0.0.0/4", "multicast"),
        ("255.255.255.255/32", "broadcast"),
        ("240.0.0.0/4", "reserved"),
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("::ffff:0:0/96", "IPv4-mapped IPv6 ({v4})"),
        ("::/96", "IPv4-compatible IPv6 ({v4})"),
        ("64:ff9b::/96", "IPv4-translated IPv6, NAT64 ({v4})"),
        ("64:ff9b:1::/48", "IPv4-translated IPv6, local NAT64"),
        ("2002::/16", "6to4 IPv6 ({v4})"),
        ("fc00::/7", "unique-local IPv6"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local IPv6"),
        ("ff00::/8", "multicast"),
    )
]

_IPV4_PART = re.compile(r"^(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)$")


class AddressNotAllowed(Exception):
    """A reference whose host is, or resolves to, an address the policy refuses; the message is the reason."""


def parse_networks(values: tuple[str, ...] | list[str]) -> tuple[Network, ...]:
    """CIDR ranges (`10.1.0.0/16`, `127.0.0.1/32`, `::1/128`; a bare address is one host). Raises ValueError
    naming the bad value."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=True))
        except ValueError as exc:
            raise ValueError(
                f"{value!r} is not a CIDR range ({exc}); write networks as 10.1.0.0/16 or 127.0.0.1/32"
            ) from None
    return tuple(networks)


def ip_literal(host: str) -> IPAddress | None:
    """The address `host` spells, if it is an IP literal, else None (a name to resolve).

    IPv4 is read as inet_aton reads it (1 to 4 dot-separated parts, each decimal, 0-prefixed octal or
    0x-prefixed hex; the last part fills the remaining bytes), because that is what getaddrinfo connects to.
    """
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    parts = host.split(".")
    if not 1 <= len(parts) <= 4 or not all(_IPV4_PART.match(p) for p in parts):
        return None
    numbers = [
        int(p, 16) if p[:2].lower() == "0x" else int(p, 8) if p.startswith("0") else int(p) for p in parts
    ]
    *leading, last = numbers
    if any(n > 255 for n in leading) or last >= 1 << (8 * (5 - len(parts))):
        return None
    value = last
    for i, n in enumerate(leading):
        value |= n << (24 - 8 * i)
    return ipaddress.IPv4Address(value)


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    if address.version != 6:
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    value = int(address)
    if value > 1 and value >> 32 in (0, 0x64FF9B << 64):  # ::a.b.c.d (not :: or ::1), 64:ff9b::a.b.c.d
        return ipaddress.IPv4Address(value & 0xFFFFFFFF)
    return None


def show(address: IPAddress) -> str:
    """`address` as written in messages (an IPv4-mapped IPv6 address as `::ffff:127.0.0.1`)."""
    if address.version == 6 and address.ipv4_mapped is not None:
        return f"::ffff:{address.ipv4_mapped}"
    return str(address)


def classify(address: IPAddress) -> str | None:
    """What kind of non-public address this is ('loopback', 'link-local', ...), or None when it is public."""
    for network, what in _REFUSED:
        if address.version == network.version and address in network:
            return what.format(v4=_embedded_ipv4(address))
    if not address.is_global:
        return "reserved"
    return None


def refusal(address: IPAddress, allowed: tuple[Network, ...] = (), host: str | None = None) -> str | None:
    """Why `address` may not be fetched from, or None when it may: public, or inside an allowed network (an
    IPv6 form that embeds an IPv4 address is also allowed when that IPv4 address is). `host`: the name
    `address` was resolved from, named in the reason."""
    what = classify(address)
    if what is None:
        return None
    embedded = _embedded_ipv4(address)
    for network in allowed:
        for candidate in (address, embedded):
            if candidate is not None and candidate.version == network.version and candidate in network:
                return None
    of = f" of {host!r}" if host else ""
    return f"address {show(address)}{of} is {what}; not allowed (see {FLAG})"


def resolve_vetted(host: str, port: int, allowed: tuple[Network, ...] = ()) -> list[tuple[int, tuple]]:
    """The (family, sockaddr) pairs to connect to for `host`: a literal as it is, a name resolved once.
    Raises AddressNotAllowed when any of them is refused (a name that resolves to one public and one
    internal address is refused: which one a connection would use is not ours to choose), and OSError
    (socket.gaierror) when the name does not resolve."""
    literal = ip_literal(host)
    if literal is not None:
        reason = refusal(literal, allowed)
        if reason:
            raise AddressNotAllowed(reason)
        family = socket.AF_INET if literal.version == 4 else socket.AF_INET6
        sockaddr = (str(literal), port) if literal.version == 4 else (str(literal), port, 0, 0)
        return [(family, sockaddr)]
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    targets: list[tuple[int, tuple]] = []
    for family, _, _, _, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        address = ipaddress.ip_address(sockaddr[0].split("%", 1)[0])
        reason = refusal(address, allowed, host)
        if reason:
            raise AddressNotAllowed(reason)
        if (family, sockaddr) not in targets:
            targets.append((family, sockaddr))
    if not targets:
        raise socket.gaierror(f"{host!r} has no IPv4 or IPv6 address")
    return targets
