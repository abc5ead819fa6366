"""Who the client is: address parsing and normalisation, the IPv6 grouping, and the walk of
X-Forwarded-For that believes only our own proxies (pure functions and the WSGI wrapper)."""

from __future__ import annotations

import ipaddress

import pytest

from security.client_address import (
    ClientAddressMiddleware,
    TrustedProxies,
    client_key,
    normalise,
    parse_address,
)

LOOPBACK = TrustedProxies.parse(["127.0.0.1/32", "::1/128", "unix"], hops=1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("203.0.113.7", "203.0.113.7"),
        (" 203.0.113.7 ", "203.0.113.7"),
        ("203.0.113.7:5555", "203.0.113.7"),
        ("2001:db8::1", "2001:db8::1"),
        ("2001:DB8:0:0::1", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("[::ffff:203.0.113.7]:80", "203.0.113.7"),
        ("::ffff:cb00:7107", "203.0.113.7"),
        ("fe80::1%eth0", "fe80::1"),
    ],
)
def test_addresses_in_every_written_form_normalise_to_one(text, expected):
    assert normalise(text) == expected
    assert str(parse_address(text)) == expected


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        "unknown",
        "_hidden",
        "203.0.113.7:",
        "203.0.113.7:port",
        "203.0.113.7:99999",
        "203.0.113.256",
        "[2001:db8::1",
        "[2001:db8::1]x",
        "[203.0.113.7]",
        "1" * 100,
        "203.0.113.7, 198.51.100.1",
        "2001:db8::/64",
        "example.com",
    ],
)
def test_anything_else_is_no_address(text):
    assert parse_address(text) is None
    assert normalise(text) is None
    assert client_key(text) == "unknown"


def test_client_key_groups_ipv6_by_the_configured_prefix():
    assert client_key("203.0.113.7") == "203.0.113.7"
    assert client_key("203.0.113.7:5555") == client_key("::ffff:203.0.113.7") == "203.0.113.7"
    assert client_key("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:2:ffff::1") == client_key("[2001:db8:1:2::9]:443")
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("2001:db8:1:3::1", ipv6_prefix=56) == "2001:db8:1::/56"
    assert client_key("2001:db8:1:2::1", ipv6_prefix=128) == "2001:db8:1:2::1/128"


def test_proxies_parse_networks_the_unix_socket_and_refuse_nonsense():
    proxies = TrustedProxies.parse(["10.0.0.5", "192.168.0.0/16", "unix"], hops=2)
    assert proxies.networks == (
        ipaddress.ip_network("10.0.0.5/32"),
        ipaddress.ip_network("192.168.0.0/16"),
    )
    assert proxies.unix and proxies.hops == 2
    for bad in (["10.0.0.0/33"], ["nginx"], [""]):
        with pytest.raises(ValueError):
            TrustedProxies.parse(bad, hops=1)
    with pytest.raises(ValueError):
        TrustedProxies.parse(["127.0.0.1/32"], hops=-1)


# -- the walk ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        # From our proxy: the address it appended is the client.
        ("127.0.0.1", "198.51.100.7", "198.51.100.7"),
        ("::1", "198.51.100.7", "198.51.100.7"),
        ("::ffff:127.0.0.1", "198.51.100.7", "198.51.100.7"),  # a dual-stack listener
        ("", "198.51.100.7", "198.51.100.7"),  # nginx on the Unix socket
        # From anyone else the header means nothing: the peer is the client.
        ("203.0.113.9", "198.51.100.7", "203.0.113.9"),
        ("::ffff:203.0.113.9", "198.51.100.7", "203.0.113.9"),
        ("10.0.0.5", "198.51.100.7", "10.0.0.5"),
        # A client's own entries left of what the proxy appended are not believed.
        ("127.0.0.1", "6.6.6.6, 198.51.100.7", "198.51.100.7"),
        # Ports and mapped forms in the header are the same client.
        ("127.0.0.1", "198.51.100.7:5555", "198.51.100.7"),
        ("127.0.0.1", "[2001:db8::1]:443", "2001:db8::1"),
        ("127.0.0.1", "::ffff:198.51.100.7", "198.51.100.7"),
        # Garbage where the client should be: not believed, and never a bucket of its own.
        ("127.0.0.1", "not-an-ip", "127.0.0.1"),
        ("127.0.0.1", "198.51.100.7, ", "127.0.0.1"),
        ("127.0.0.1", "1.2.3.4 5.6.7.8", "127.0.0.1"),
        # No header: the peer.
        ("127.0.0.1", None, "127.0.0.1"),
        ("127.0.0.1", "", "127.0.0.1"),
        ("", None, None),
        ("junk", "198.51.100.7", None),
    ],
)
def test_the_walk_behind_one_local_proxy(peer, forwarded, expected):
    assert LOOPBACK.client(peer, forwarded) == expected


def test_forwarded_headers_are_off_with_no_hops():
    off = TrustedProxies.parse(["127.0.0.1/32"], hops=0)
    assert off.client("127.0.0.1", "198.51.100.7") == "127.0.0.1"
    assert off.client("::ffff:127.0.0.1", None) == "127.0.0.1"


def test_the_walk_skips_trusted_hops_from_the_right_up_to_the_hop_count():
    # client → balancer (10.0.0.2) → nginx (10.0.0.3) → app
    chain = TrustedProxies.parse(["10.0.0.0/24"], hops=2)
    assert chain.client("10.0.0.3", "198.51.100.7, 10.0.0.2") == "198.51.100.7"
    # Forged entries left of the client are never reached.
    assert chain.client("10.0.0.3", "6.6.6.6, 198.51.100.7, 10.0.0.2") == "198.51.100.7"
    # The first untrusted address from the right is the client, even before the hop count.
    assert chain.client("10.0.0.3", "6.6.6.6, 198.51.100.7") == "198.51.100.7"
    # The hop count bounds the walk: a client inside the trusted network cannot push it on.
    assert chain.client("10.0.0.3", "6.6.6.6, 10.0.0.9, 10.0.0.2") == "10.0.0.9"
    # Every entry trusted: the leftmost is the client.
    assert chain.client("10.0.0.3", "10.0.0.9") == "10.0.0.9"
    # One proxy only (hops=1): a trusted client of nginx is itself.
    one = TrustedProxies.parse(["10.0.0.0/24"], hops=1)
    assert one.client("10.0.0.3", "6.6.6.6, 10.0.0.9") == "10.0.0.9"


def test_a_unix_socket_peer_is_trusted_only_when_listed():
    without = TrustedProxies.parse(["127.0.0.1/32"], hops=1)
    assert without.client("", "198.51.100.7") is None
    assert LOOPBACK.client("", "198.51.100.7") == "198.51.100.7"


# -- the WSGI wrapper -------------------------------------------------------------------------


def run(middleware_of, environ: dict) -> dict:
    seen: dict = {}

    def app(env, start_response):
        seen.update(env)
        return [b""]

    middleware_of(app)(environ, lambda *a: None)
    return seen


def test_middleware_sets_the_client_address_and_keeps_the_peer():
    seen = run(
        lambda app: ClientAddressMiddleware(app, LOOPBACK),
        {
            "REMOTE_ADDR": "127.0.0.1",
            "HTTP_X_FORWARDED_FOR": "198.51.100.7:5555",
            "HTTP_X_FORWARDED_PROTO": "https",
            "wsgi.url_scheme": "http",
        },
    )
    assert seen["REMOTE_ADDR"] == "198.51.100.7"
    assert seen["m2fp.peer_addr"] == "127.0.0.1"
    assert seen["wsgi.url_scheme"] == "https"


def test_middleware_ignores_forwarded_headers_from_others_and_unmaps_the_peer():
    seen = run(
        lambda app: ClientAddressMiddleware(app, LOOPBACK),
        {
            "REMOTE_ADDR": "::ffff:203.0.113.9",
            "HTTP_X_FORWARDED_FOR": "198.51.100.7",
            "HTTP_X_FORWARDED_PROTO": "https",
            "wsgi.url_scheme": "http",
        },
    )
    assert seen["REMOTE_ADDR"] == "203.0.113.9"
    assert seen["wsgi.url_scheme"] == "http"


def test_the_settings_default_is_loopback_and_the_unix_socket_and_off_without_hops():
    from settings import Settings

    auto = TrustedProxies.from_settings(Settings(trusted_proxies=1))
    assert auto == TrustedProxies.parse(["127.0.0.1/32", "::1/128", "unix"], hops=1)
    assert TrustedProxies.from_settings(Settings()).client("127.0.0.1", "198.51.100.7") == (
        "127.0.0.1"
    )
