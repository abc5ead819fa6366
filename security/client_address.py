"""Who the client is: its address, read from the TCP peer or, only when the peer is one of our
own proxies, from `X-Forwarded-For`; normalised so that one client is one key.

- `parse_address` reads an address in any form a server or a proxy writes it (`203.0.113.7`,
  `203.0.113.7:5555`, `[2001:db8::1]:443`, `::ffff:203.0.113.7`, `fe80::1%eth0`) and returns
  the plain address, IPv4-mapped IPv6 unmapped; anything else is no address (None).
- `client_key` is the rate-limit and ban key of an address: IPv4 as is, IPv6 by its
  `M2FP_IPV6_CLIENT_PREFIX` network (/64: the block one host usually owns), "unknown" for
  what is no address, so garbage never makes a bucket of its own.
- `TrustedProxies.client` is the standard walk: a peer outside the trusted networks is the
  client and its `X-Forwarded-For` means nothing; from a trusted peer, the header is read from
  the right, skipping trusted addresses, and the first untrusted one is the client. At most
  `M2FP_TRUSTED_PROXIES` entries are read, so a client inside a broad trusted network cannot
  push the walk past what the proxies wrote. An entry that is no address stops the walk: the
  peer is the client.
- `ClientAddressMiddleware` (plain WSGI, no Flask) puts the result in `REMOTE_ADDR`, so the
  abuse gate, the audit log and the `/metrics` allow list all see the same client.

A Unix socket has no peer address (gunicorn passes ""): `unix` among the trusted networks
means a peer on the socket is our proxy; the socket's file permissions decide who that can be.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

UNIX = "unix"  # the name of the Unix-socket peer among the trusted networks
UNKNOWN = "unknown"
PEER_ENVIRON_KEY = "m2fp.peer_addr"  # the TCP peer, before the walk replaced REMOTE_ADDR
# "[" + the longest IPv6 text with an embedded IPv4 and a zone + "]:65535", with room to spare
_MAX_TEXT = 80
_PORT = re.compile(r":[0-9]{1,5}")
_SCHEMES = ("http", "https")


def parse_address(text: str | None) -> IPAddress | None:
    """The address in `text` (ports, brackets and IPv6 zones dropped, IPv4-mapped IPv6
    unmapped), or None when `text` is not one address."""
    if not text:
        return None
    text = text.strip()
    if not text or len(text) > _MAX_TEXT:
        return None
    host, port = text, ""
    if text.startswith("["):  # [IPv6] or [IPv6]:port
        host, bracket, port = text[1:].partition("]")
        if not bracket:
            return None
    elif text.count(":") == 1:  # IPv4:port (an IPv6 address has at least two colons)
        host, port = text.split(":")
        port = ":" + port
    if port and (not _PORT.fullmatch(port) or int(port[1:]) > 65535):
        return None
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv4Address):
        return None if text.startswith("[") else ip
    if ip.ipv4_mapped is not None:  # ::ffff:a.b.c.d is the IPv4 client a.b.c.d
        return ip.ipv4_mapped
    if ip.scope_id is not None:
        return ipaddress.IPv6Address(int(ip))
    return ip


def normalise(text: str | None) -> str | None:
    """`text` as one canonical address string, or None when it is not an address."""
    ip = parse_address(text)
    return None if ip is None else str(ip)


def client_key(address: str | None, ipv6_prefix: int = 64) -> str:
    """The rate-limit and ban key of a client address: IPv4 as is, IPv6 by its
    `/ipv6_prefix` network, "unknown" for anything that is not an address."""
    ip = parse_address(address)
    if ip is None:
        return UNKNOWN
    if ip.version == 4:
        return str(ip)
    return str(ipaddress.IPv6Network((int(ip), ipv6_prefix), strict=False))


@dataclass(frozen=True)
class TrustedProxies:
    """Our own proxies, whose `X-Forwarded-For` is believed."""

    networks: tuple[IPNetwork, ...] = ()
    unix: bool = False  # a peer on a Unix socket (no address) is one of ours
    hops: int = 0  # at most this many entries of X-Forwarded-For are read; 0: none

    @classmethod
    def parse(cls, networks: Iterable[str], *, hops: int) -> TrustedProxies:
        """From `M2FP_TRUSTED_PROXY_NETWORKS`-style entries (CIDRs, single addresses, `unix`).

        Raises:
            ValueError: an entry that is neither, or a negative hop count.
        """
        if hops < 0:
            raise ValueError("the hop count must be 0 or more")
        parsed: list[IPNetwork] = []
        unix = False
        for entry in networks:
            entry = entry.strip()
            if entry == UNIX:
                unix = True
                continue
            try:
                parsed.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                raise ValueError(f"{entry!r} is not a network, an address or 'unix'") from None
        return cls(tuple(parsed), unix, hops)

    @classmethod
    def from_settings(cls, settings: Settings) -> TrustedProxies:
        """From `settings.Settings` (its networks checked when it was made)."""
        return cls.parse(settings.proxy_networks, hops=settings.trusted_proxies)

    def contains(self, ip: IPAddress) -> bool:
        return any(ip in network for network in self.networks)

    def trusts_peer(self, peer: str | None) -> bool:
        """Whether the TCP peer (REMOTE_ADDR as the server wrote it) is one of our proxies."""
        if self.hops == 0:
            return False
        if not peer:  # a Unix socket
            return self.unix
        ip = parse_address(peer)
        return ip is not None and self.contains(ip)

    def client(self, peer: str | None, forwarded_for: str | None) -> str | None:
        """The client's normalised address: the peer's, or from a trusted peer the first
        untrusted address of `forwarded_for` from the right (None: a Unix-socket peer, or a
        peer that is no address, with nothing believable to say)."""
        peer_address = normalise(peer)
        if not forwarded_for or not self.trusts_peer(peer):
            return peer_address
        client: IPAddress | None = None
        # The rightmost `hops` entries, nearest proxy first; the rest is never even split.
        for entry in reversed(forwarded_for.rsplit(",", self.hops)[-self.hops :]):
            client = parse_address(entry)
            if client is None:  # a proxy of ours never writes that: believe none of it
                return peer_address
            if not self.contains(client):
                break
        return str(client) if client is not None else peer_address

    def scheme(self, peer: str | None, forwarded_proto: str | None) -> str | None:
        """`X-Forwarded-Proto` (the nearest proxy's value) from a trusted peer, else None."""
        if not forwarded_proto or not self.trusts_peer(peer):
            return None
        value = forwarded_proto.rsplit(",", 1)[-1].strip().lower()
        return value if value in _SCHEMES else None


WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class ClientAddressMiddleware:
    """WSGI: `REMOTE_ADDR` becomes the client's normalised address ("" when unknown), the
    TCP peer is kept in `environ["m2fp.peer_addr"]`, and a trusted peer's
    `X-Forwarded-Proto` sets `wsgi.url_scheme`."""

    def __init__(self, app: WSGIApp, proxies: TrustedProxies) -> None:
        self.app, self.proxies = app, proxies

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        peer = environ.get("REMOTE_ADDR")
        environ[PEER_ENVIRON_KEY] = peer
        environ["REMOTE_ADDR"] = (
            self.proxies.client(peer, environ.get("HTTP_X_FORWARDED_FOR")) or ""
        )
        scheme = self.proxies.scheme(peer, environ.get("HTTP_X_FORWARDED_PROTO"))
        if scheme is not None:
            environ["wsgi.url_scheme"] = scheme
        return self.app(environ, start_response)


__all__ = [
    "PEER_ENVIRON_KEY",
    "UNIX",
    "UNKNOWN",
    "ClientAddressMiddleware",
    "TrustedProxies",
    "client_key",
    "normalise",
    "parse_address",
]
