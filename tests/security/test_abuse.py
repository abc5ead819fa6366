"""Rate limits, API keys and bans through the Flask test client (memory:// storage), and the
ban list on a real redis-server."""

from __future__ import annotations

import http.client
import io
import json
import time

import pytest
from limits.storage import storage_from_string

from security.abuse import BanList, client_bucket, presented_key
from security.errors import BadRequest
from tests.support import images
from tests.support.api import write_keys
from tests.support.servers import Gunicorn, RedisServer

PARSE = "/api/v1/parse"
EXEMPT = [
    "/healthz",
    "/readyz",
    "/metrics",
    "/api/v1/classes",
    "/api/v1/openapi.json",
    "/",
    "/kiosk",
]


def parse(client, data: bytes | None = None, mime: str = "image/png", **kwargs):
    return client.post(
        PARSE + "?output=json",
        data=images.png() if data is None else data,
        content_type=mime,
        **kwargs,
    )


def test_default_limit_is_five_parses_per_minute(make_app):
    client = make_app().test_client()
    statuses = [parse(client).status_code for _ in range(6)]
    assert statuses == [200] * 5 + [429]
    r = parse(client)
    assert r.status_code == 429
    body = r.get_json()["error"]
    assert body["code"] == "rate_limited"
    assert 0 < int(r.headers["Retry-After"]) <= 60
    assert r.headers["X-RateLimit-Limit"] == "5"
    assert r.headers["X-RateLimit-Remaining"] == "0"


def test_limit_is_configurable_and_success_has_no_retry_after(make_app):
    client = make_app(rate_limit="2 per minute").test_client()
    first = parse(client)
    assert first.status_code == 200
    assert first.headers["X-RateLimit-Remaining"] == "1"
    assert "Retry-After" not in first.headers
    assert parse(client).status_code == 200
    assert parse(client).status_code == 429


def test_everything_but_parse_is_exempt(make_app):
    client = make_app(rate_limit="1 per minute").test_client()
    assert parse(client).status_code == 200
    assert parse(client).status_code == 429
    for path in EXEMPT:
        for _ in range(8):
            assert client.get(path).status_code != 429, path


def test_options_preflight_is_not_counted(make_app):
    client = make_app(rate_limit="1 per minute", cors_origins=("https://a.example",)).test_client()
    for _ in range(3):
        client.options(
            PARSE, headers={"Origin": "https://a.example", "Access-Control-Request-Method": "POST"}
        )
    assert parse(client).status_code == 200


def test_clients_are_told_apart_only_through_trusted_proxies(make_app):
    direct = make_app(rate_limit="1 per minute").test_client()
    assert parse(direct, headers={"X-Forwarded-For": "198.51.100.1"}).status_code == 200
    # Without trusted proxies the header is ignored: same client, limit reached.
    assert parse(direct, headers={"X-Forwarded-For": "198.51.100.2"}).status_code == 429

    behind = make_app(rate_limit="1 per minute", trusted_proxies=1).test_client()
    assert parse(behind, headers={"X-Forwarded-For": "198.51.100.1"}).status_code == 200
    assert parse(behind, headers={"X-Forwarded-For": "198.51.100.2"}).status_code == 200
    assert parse(behind, headers={"X-Forwarded-For": "198.51.100.1"}).status_code == 429
    # A client cannot forge its way in front of the one trusted proxy: the rightmost counts.
    forged = {"X-Forwarded-For": "203.0.113.9, 198.51.100.2"}
    assert parse(behind, headers=forged).status_code == 429


def test_client_bucket():
    assert client_bucket("192.0.2.7") == "192.0.2.7"
    assert client_bucket("::ffff:192.0.2.7") == "192.0.2.7"
    assert client_bucket("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert client_bucket("2001:db8:1:2:ffff::1") == client_bucket("2001:db8:1:2::9")
    assert client_bucket(None) == "unknown"


# --- API keys --------------------------------------------------------------------------------


@pytest.fixture
def keyed(make_app, tmp_path):
    keys = write_keys(tmp_path / "keys", {"editor": "2 per minute", "batch": None})
    app = make_app(
        api_keys_file=tmp_path / "keys", api_keys_required=True, rate_limit="3 per minute"
    )
    return app.test_client(), keys


def test_key_required(keyed):
    client, _ = keyed
    r = parse(client)
    assert r.status_code == 401
    assert r.get_json()["error"]["code"] == "unauthorized"
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    r = parse(client, headers={"X-API-Key": "not-a-key"})
    assert r.status_code == 403
    assert r.get_json()["error"]["code"] == "forbidden"
    r = parse(client, headers={"Authorization": "Bearer " + "x" * 5000})
    assert r.status_code == 403
    # Health and the legend stay open.
    assert client.get("/healthz").status_code == 200
    assert client.get("/api/v1/classes").status_code == 200


def test_both_key_headers_and_each_key_its_own_limit(keyed):
    client, keys = keyed
    editor_bearer = {"Authorization": f"Bearer {keys['editor']}"}
    editor_header = {"X-API-Key": keys["editor"]}
    assert parse(client, headers=editor_bearer).status_code == 200
    assert parse(client, headers=editor_header).status_code == 200
    r = parse(client, headers=editor_bearer)
    assert r.status_code == 429 and r.headers["X-RateLimit-Limit"] == "2"
    # "batch" has no limit of its own: M2FP_RATE_LIMIT, in its own bucket.
    batch = {"X-API-Key": keys["batch"]}
    assert [parse(client, headers=batch).status_code for _ in range(4)] == [200, 200, 200, 429]


@pytest.mark.parametrize(
    "headers",
    [{"Authorization": "Bearer"}, {"Authorization": "Bearer a", "X-API-Key": "b"}],
)
def test_malformed_key_headers_are_400(keyed, headers):
    client, _ = keyed
    assert parse(client, headers=headers).status_code == 400


def test_other_authorization_schemes_are_not_keys(keyed):
    # e.g. nginx auth_basic in front passes its Authorization header on.
    client, keys = keyed
    basic = {"Authorization": "Basic dXNlcjpwYXNz"}
    assert parse(client, headers=basic).status_code == 401
    assert parse(client, headers={**basic, "X-API-Key": keys["batch"]}).status_code == 200


def test_keys_optional_when_not_required(make_app, tmp_path):
    keys = write_keys(tmp_path / "keys", {"editor": "1 per minute"})
    client = make_app(api_keys_file=tmp_path / "keys", rate_limit="1 per minute").test_client()
    assert parse(client).status_code == 200  # anonymous: the address bucket
    assert parse(client, headers={"X-API-Key": keys["editor"]}).status_code == 200  # key bucket
    assert parse(client).status_code == 429
    assert parse(client, headers={"X-API-Key": "unknown"}).status_code == 403


def test_presented_key():
    assert presented_key({}) is None
    assert presented_key({"Authorization": "bearer abc"}) == "abc"
    assert presented_key({"X-API-Key": " abc "}) == "abc"
    assert presented_key({"Authorization": "Bearer abc", "X-API-Key": "abc"}) == "abc"
    assert presented_key({"Authorization": "Basic dXNlcjpwYXNz"}) is None
    with pytest.raises(BadRequest):
        presented_key({"Authorization": "Bearer "})


# --- bans ------------------------------------------------------------------------------------


def test_three_invalid_uploads_ban_the_client(make_app):
    app = make_app(rate_limit="100 per minute", ban_after=3, ban_seconds=3600)
    client = app.test_client()
    assert parse(client, images.TEXT).status_code == 415
    assert parse(client, images.truncated_jpeg(), "image/jpeg").status_code == 422
    assert parse(client, images.png_bomb()).status_code == 413  # pixels: counts
    r = parse(client)  # a valid upload, but the client is banned now
    assert r.status_code == 429
    assert r.get_json()["error"]["code"] == "temporarily_banned"
    assert 3500 < int(r.headers["Retry-After"]) <= 3600
    # Other clients are not affected.
    other = parse(client, environ_base={"REMOTE_ADDR": "192.0.2.50"})
    assert other.status_code == 200
    # The ban covers parses only.
    assert client.get("/healthz").status_code == 200


def test_request_mistakes_do_not_count(make_app):
    app = make_app(max_upload_mb=0.05, rate_limit="100 per minute", ban_after=2)
    client = app.test_client()
    assert parse(client, b"").status_code == 400
    assert (
        client.post(PARSE + "?alpha=5", data=images.png(), content_type="image/png").status_code
        == 400
    )
    assert parse(client, images.png(), "text/plain").status_code == 415  # a request-form error
    assert parse(client, images.padded_png(60_000)).status_code == 413  # bytes: honest mistake
    multipart = {"image": (io.BytesIO(images.padded_png(60_000)), "big.png")}
    r = client.post(PARSE, data=multipart, content_type="multipart/form-data")
    assert r.status_code == 413
    assert parse(client).status_code == 200


def test_strikes_expire_with_the_window_and_bans_with_their_time(make_app):
    app = make_app(rate_limit="100 per minute", ban_after=2, ban_window_seconds=1, ban_seconds=1)
    client = app.test_client()
    assert parse(client, images.TEXT).status_code == 415
    time.sleep(1.2)  # the first strike has expired
    assert parse(client, images.TEXT).status_code == 415
    assert parse(client).status_code == 200
    assert parse(client, images.TEXT).status_code == 415  # second strike within the window
    r = parse(client)
    assert r.status_code == 429 and r.get_json()["error"]["code"] == "temporarily_banned"
    time.sleep(1.2)
    assert parse(client).status_code == 200


def test_keyed_clients_are_banned_by_key(make_app, tmp_path):
    keys = write_keys(tmp_path / "keys", {"a": None, "b": None})
    app = make_app(api_keys_file=tmp_path / "keys", rate_limit="100 per minute", ban_after=1)
    client = app.test_client()
    assert parse(client, images.TEXT, headers={"X-API-Key": keys["a"]}).status_code == 415
    assert parse(client, headers={"X-API-Key": keys["a"]}).status_code == 429
    assert parse(client, headers={"X-API-Key": keys["b"]}).status_code == 200


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path)
    yield server
    server.stop()


def test_ban_list_on_redis(redis_server):
    storage = storage_from_string(redis_server.url, wrap_exceptions=True)
    bans = BanList(storage, after=2, window_s=60, ban_s=30)
    assert bans.retry_after("ip:192.0.2.1") is None
    assert bans.strike("ip:192.0.2.1") is False
    assert bans.retry_after("ip:192.0.2.1") is None
    assert bans.strike("ip:192.0.2.1") is True
    assert 28 <= bans.retry_after("ip:192.0.2.1") <= 30
    assert bans.retry_after("ip:192.0.2.2") is None
    # A second BanList on the same storage (another worker) sees the ban.
    other = BanList(storage_from_string(redis_server.url), after=2, window_s=60, ban_s=30)
    assert other.retry_after("ip:192.0.2.1") is not None


def test_unreachable_storage_fails_closed(make_app, redis_server):
    app = make_app(ratelimit_storage=redis_server.url)
    client = app.test_client()
    assert parse(client).status_code == 200
    assert client.get("/readyz").status_code == 200
    redis_server.stop()
    r = parse(client)
    assert r.status_code == 503, r.get_data(as_text=True)
    assert r.get_json()["error"]["code"] == "unavailable"
    assert client.get("/readyz").status_code == 503


# --- the client address: only our proxies are believed, one client is one key -----------------

NGINX = {"REMOTE_ADDR": "127.0.0.1"}  # the edge, on the default trusted network
STRANGER = {"REMOTE_ADDR": "203.0.113.9"}  # someone who reaches the app's port directly


def forwarded(address: str) -> dict[str, str]:
    return {"X-Forwarded-For": address}


def test_a_stranger_cannot_dodge_the_limit_by_rotating_x_forwarded_for(make_app):
    client = make_app(rate_limit="2 per minute", trusted_proxies=1).test_client()
    statuses = [
        parse(client, headers=forwarded(f"198.51.100.{n}"), environ_base=STRANGER).status_code
        for n in range(4)
    ]
    assert statuses == [200, 200, 429, 429]
    # The edge's clients are told apart as before.
    assert parse(client, headers=forwarded("198.51.100.1"), environ_base=NGINX).status_code == 200


def test_a_stranger_cannot_get_someone_else_banned(make_app):
    client = make_app(rate_limit="100 per minute", trusted_proxies=1, ban_after=2).test_client()
    victim = forwarded("198.51.100.7")
    for _ in range(2):
        assert parse(client, images.TEXT, headers=victim, environ_base=STRANGER).status_code == 415
    banned = parse(client, headers=victim, environ_base=STRANGER)
    assert banned.get_json()["error"]["code"] == "temporarily_banned"  # the sender itself
    assert parse(client, headers=victim, environ_base=NGINX).status_code == 200


def test_trusted_networks_are_configurable(make_app):
    client = make_app(
        rate_limit="1 per minute", trusted_proxies=1, trusted_proxy_networks=("10.0.0.5/32",)
    ).test_client()
    edge = {"REMOTE_ADDR": "10.0.0.5"}
    assert parse(client, headers=forwarded("198.51.100.1"), environ_base=edge).status_code == 200
    assert parse(client, headers=forwarded("198.51.100.2"), environ_base=edge).status_code == 200
    # Loopback is no longer a proxy of ours: its header is ignored, it is one client.
    assert parse(client, headers=forwarded("198.51.100.3"), environ_base=NGINX).status_code == 200
    assert parse(client, headers=forwarded("198.51.100.4"), environ_base=NGINX).status_code == 429


@pytest.mark.parametrize(
    ("trusted", "forms"),
    [
        (1, [("127.0.0.1", "198.51.100.7:5555"), ("127.0.0.1", "::ffff:198.51.100.7")]),
        (1, [("::ffff:198.51.100.7", None), ("198.51.100.7", None)]),
        (0, [("::ffff:198.51.100.7", None), ("198.51.100.7", None)]),
        (1, [("127.0.0.1", "[2001:db8:1:2::1]:443"), ("2001:db8:1:2:ffff::9", None)]),
    ],
)
def test_ports_mapped_forms_and_one_ipv6_64_are_one_client(make_app, trusted, forms):
    client = make_app(rate_limit="2 per minute", trusted_proxies=trusted).test_client()
    statuses = []
    for peer, header in forms + forms[:1]:
        headers = forwarded(header) if header else {}
        r = parse(client, headers=headers, environ_base={"REMOTE_ADDR": peer})
        statuses.append(r.status_code)
    assert statuses == [200, 200, 429]


def test_the_ipv6_prefix_of_one_client_is_configurable(make_app):
    client = make_app(rate_limit="1 per minute", ipv6_client_prefix=56).test_client()
    assert parse(client, environ_base={"REMOTE_ADDR": "2001:db8:1:2::1"}).status_code == 200
    assert parse(client, environ_base={"REMOTE_ADDR": "2001:db8:1:3::1"}).status_code == 429
    assert parse(client, environ_base={"REMOTE_ADDR": "2001:db8:2::1"}).status_code == 200


def test_garbage_in_x_forwarded_for_is_never_a_new_bucket(make_app):
    client = make_app(rate_limit="2 per minute", trusted_proxies=1).test_client()
    statuses = [
        parse(client, headers=forwarded(junk), environ_base=NGINX).status_code
        for junk in ("unknown", "not-an-ip-1", "203.0.113.7:port", "_hidden")
    ]
    assert statuses == [200, 200, 429, 429]  # all counted as the proxy itself


def test_client_bucket_normalises_every_form():
    assert client_bucket("192.0.2.7:5555") == client_bucket("[::ffff:192.0.2.7]:80") == "192.0.2.7"
    assert client_bucket("not an address") == client_bucket("") == "unknown"
    assert client_bucket("2001:db8:1:2::1", ipv6_prefix=48) == "2001:db8:1::/48"


@pytest.mark.deploy
@pytest.mark.slow
def test_over_gunicorn_only_the_edges_forwarded_header_is_believed(tiny_model_dir):
    """Real gunicorn on 127.0.0.1; the edge is 127.0.0.1, strangers come from other loopback
    addresses straight to the app's port with forged X-Forwarded-For headers."""
    server = Gunicorn(
        {
            "M2FP_MODEL_DIR": str(tiny_model_dir),
            "M2FP_TRUSTED_PROXIES": "1",
            "M2FP_TRUSTED_PROXY_NETWORKS": "127.0.0.1/32",
            "M2FP_AUDIT_CLIENT": "full",
            "M2FP_RATE_LIMIT": "2 per minute",
            "M2FP_BAN_AFTER": "2",
        }
    )

    def post(source: str, body: bytes, header: str | None) -> tuple[int, str, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, 30, (source, 0))
        headers = {"Content-Type": "image/png", **(forwarded(header) if header else {})}
        try:
            conn.request("POST", PARSE + "?output=json", body=body, headers=headers)
            answer = conn.getresponse()
            payload = json.loads(answer.read())
        finally:
            conn.close()
        code = payload["error"]["code"] if "error" in payload else "ok"
        return answer.status, code, dict(answer.getheaders())

    png = images.png()
    try:
        # Rotating the header does not make new clients.
        rotated = [post("127.0.0.9", png, f"198.51.100.{n}")[:2] for n in range(3)]
        assert rotated == [(200, "ok"), (200, "ok"), (429, "rate_limited")]
        # Blaming a victim bans the sender, not the victim.
        for _ in range(2):
            assert post("127.0.0.10", images.TEXT, "198.51.100.7")[0] == 415
        assert post("127.0.0.10", png, "198.51.100.7")[:2] == (429, "temporarily_banned")
        # Through the edge the victim is served; its port and mapped forms are one client.
        victim = [
            post("127.0.0.1", png, form)
            for form in ("198.51.100.7:5555", "::ffff:198.51.100.7", "198.51.100.7")
        ]
        assert [status for status, _, _ in victim] == [200, 200, 429]
        ids = {headers["X-Request-ID"] for _, _, headers in victim}
        deadline = time.monotonic() + 5  # the audit line follows the response
        while len(lines := [e for e in server.audit() if e["request_id"] in ids]) < len(ids):
            assert time.monotonic() < deadline, "audit lines missing"
            time.sleep(0.05)
        assert {line["client"] for line in lines} == {"198.51.100.7"}
    finally:
        server.stop()
