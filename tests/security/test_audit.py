"""The audit log: one JSON line per request on stdout, the fields of the design, and nothing
of the upload (bytes, file name), of keys or of query strings in any log."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import secrets

import pytest

from security.audit import client_label
from tests.support import images
from tests.support.api import write_keys

PARSE = "/api/v1/parse"
FIELDS = {
    "time",
    "request_id",
    "client",
    "api_key",
    "method",
    "path",
    "status",
    "bytes_in",
    "image",
    "persons",
    "latency_ms",
    "outcome",
    "trailer_bytes",
}


def audit_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith('{"time"')]


def test_one_line_per_request_with_the_design_fields(app, capsys):
    client = app.test_client()
    capsys.readouterr()
    r1 = client.post(
        PARSE + "?output=json&alpha=0.5", data=images.png(160, 120), content_type="image/png"
    )
    r2 = client.post(PARSE, data=images.TEXT, content_type="image/png")
    r3 = client.get("/nothing/here?x=1")
    r4 = client.get("/healthz")
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 4  # nothing else on stdout
    lines = audit_lines(out)
    assert [line["request_id"] for line in lines] == [
        r.headers["X-Request-ID"] for r in (r1, r2, r3, r4)
    ]
    for line in lines:
        assert set(line) == FIELDS
        assert line["time"].endswith("Z")
        assert line["latency_ms"] >= 0
    ok, bad, missing, health = lines
    assert ok["method"] == "POST" and ok["path"] == PARSE and ok["status"] == 200
    assert ok["outcome"] == "ok"
    assert ok["image"] == {"width": 160, "height": 120}
    assert ok["persons"] == len(r1.get_json()["persons"])
    assert ok["bytes_in"] == len(images.png(160, 120))
    assert ok["client"] == "127.0.0.0"  # truncated by default
    assert ok["api_key"] is None
    assert bad["status"] == 415 and bad["outcome"] == "unsupported_media_type"
    assert bad["image"] is None and bad["persons"] is None
    assert missing["path"] == "/nothing/here" and missing["outcome"] == "not_found"
    assert health["bytes_in"] == 0


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("full", "198.51.100.77"), ("truncated", "198.51.100.0")],
)
def test_client_modes(make_app, capsys, mode, expected):
    client = make_app(audit_client=mode).test_client()
    capsys.readouterr()
    client.get("/healthz", environ_base={"REMOTE_ADDR": "198.51.100.77"})
    assert audit_lines(capsys.readouterr().out)[0]["client"] == expected


def test_client_hash_is_keyed_and_stable(make_app, capsys):
    client = make_app(audit_client="hash", audit_hash_key="k1").test_client()
    capsys.readouterr()
    for addr in ("198.51.100.77", "198.51.100.77", "198.51.100.78"):
        client.get("/healthz", environ_base={"REMOTE_ADDR": addr})
    a, b, c = (line["client"] for line in audit_lines(capsys.readouterr().out))
    assert a == b != c
    assert "198.51" not in a and len(a) == 16
    assert a == client_label("198.51.100.77", "hash", b"k1")
    assert a != client_label("198.51.100.77", "hash", b"k2")


def test_client_label_truncates_ipv6():
    assert client_label("2001:db8:aa:bb::1", "truncated", b"") == "2001:db8:aa::"
    assert client_label(None, "full", b"") is None


def test_key_id_is_logged_never_the_key(make_app, tmp_path, capfd):
    keys = write_keys(tmp_path / "keys", {"editor": None})
    client = make_app(api_keys_file=tmp_path / "keys").test_client()
    capfd.readouterr()
    client.post(
        PARSE,
        data=images.png(),
        content_type="image/png",
        headers={"Authorization": f"Bearer {keys['editor']}"},
    )
    client.post(
        PARSE,
        data=images.png(),
        content_type="image/png",
        headers={"X-API-Key": "wrong-" + keys["editor"]},
    )
    out, err = capfd.readouterr()
    lines = audit_lines(out)
    assert lines[0]["api_key"] == "editor"
    assert lines[1]["status"] == 403 and lines[1]["api_key"] is None
    assert keys["editor"] not in out + err
    assert hashlib.sha256(keys["editor"].encode()).hexdigest() not in out + err


def test_no_upload_bytes_file_names_or_queries_in_any_log(make_app, capfd, caplog):
    """Canaries in a PNG text chunk, in the file name and in a query string appear nowhere in
    stdout, stderr or the log records, whatever the outcome."""
    canary = "CANARY" + secrets.token_hex(8)
    name = f"{canary}-holiday.png"
    photo = images.png(text={"Comment": canary, "Author": canary})
    assert canary.encode() in photo
    client = make_app(rate_limit="100 per minute").test_client()
    capfd.readouterr()
    sends = [
        lambda: client.post(
            PARSE + "?output=json",
            data={"image": (io.BytesIO(photo), name, "image/png")},
            content_type="multipart/form-data",
        ),
        lambda: client.post(
            PARSE,
            data={"image": (io.BytesIO(photo), name[:-4] + ".jpg")},
            content_type="multipart/form-data",
        ),  # 415: name disagrees
        lambda: client.post(
            PARSE,
            data={"image": (io.BytesIO(photo[:300]), name)},
            content_type="multipart/form-data",
        ),  # 422: truncated
        lambda: client.post(PARSE, json={"image": base64.b64encode(photo).decode()}),
        lambda: client.post(f"{PARSE}?{canary}=1", data=photo, content_type="image/png"),
        lambda: client.post(f"{PARSE}?classes={canary}", data=photo, content_type="image/png"),
        lambda: client.post(
            PARSE,
            data=photo,
            content_type="image/png",
            headers={"Authorization": f"Bearer {canary}"},
        ),
        lambda: client.get(f"/healthz?token={canary}"),
    ]
    statuses = [send().status_code for send in sends]
    assert statuses[0] == 200 and 415 in statuses and 422 in statuses and 400 in statuses
    out, err = capfd.readouterr()
    logged = out + err + caplog.text
    encoded = base64.b64encode(photo).decode()
    assert len(audit_lines(out)) == len(sends)
    for needle in (canary, canary.lower(), encoded[100:140], "holiday"):
        assert needle not in logged


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("full", "203.0.113.7"), ("truncated", "203.0.113.0")],
)
def test_an_ipv4_mapped_client_is_audited_as_its_ipv4_address(make_app, capsys, mode, expected):
    """A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d; truncated, that was `::`."""
    client = make_app(audit_client=mode).test_client()
    capsys.readouterr()
    client.get("/healthz", environ_base={"REMOTE_ADDR": "::ffff:203.0.113.7"})
    assert audit_lines(capsys.readouterr().out)[0]["client"] == expected


def test_the_audited_client_is_the_one_the_trusted_proxy_names(make_app, capsys):
    client = make_app(audit_client="full", trusted_proxies=1).test_client()
    capsys.readouterr()
    via_edge = {"REMOTE_ADDR": "127.0.0.1"}
    client.get("/healthz", headers={"X-Forwarded-For": "[2001:db8::7]:443"}, environ_base=via_edge)
    client.get("/healthz", headers={"X-Forwarded-For": "garbage"}, environ_base=via_edge)
    stranger = {"REMOTE_ADDR": "203.0.113.9"}
    client.get("/healthz", headers={"X-Forwarded-For": "198.51.100.1"}, environ_base=stranger)
    clients = [line["client"] for line in audit_lines(capsys.readouterr().out)]
    assert clients == ["2001:db8::7", "127.0.0.1", "203.0.113.9"]


def test_client_label_normalises_before_it_truncates_or_hashes():
    assert client_label("::ffff:203.0.113.7", "truncated", b"") == "203.0.113.0"
    assert client_label("[::ffff:203.0.113.7]:443", "full", b"") == "203.0.113.7"
    assert client_label("203.0.113.7:5555", "hash", b"k") == client_label(
        "203.0.113.7", "hash", b"k"
    )
    assert client_label("not an address", "full", b"") == "unknown"


def test_a_dropped_trailer_is_audited_by_its_size_and_nothing_of_it(make_app, capfd, caplog):
    """A motion photo's video is dropped undecoded: the audit line says how many bytes, and
    nothing of them appears in any log; the strict setting refuses it (415)."""
    canary = "CANARY" + secrets.token_hex(8)
    still = images.sample("image/jpeg", images.quadrants())
    video = images.MP4_VIDEO + canary.encode()
    client = make_app(rate_limit="100 per minute").test_client()
    strict = make_app(rate_limit="100 per minute", allow_trailing_data=False).test_client()
    capfd.readouterr()
    sends = [
        client.post(PARSE + "?output=json", data=still + video, content_type="image/jpeg"),
        client.post(PARSE + "?output=json", data=still, content_type="image/jpeg"),
        client.get("/healthz"),
        strict.post(PARSE, data=still + video, content_type="image/jpeg"),
    ]
    assert [r.status_code for r in sends] == [200, 200, 200, 415]
    out, err = capfd.readouterr()
    motion, plain, health, refused = audit_lines(out)
    assert list(motion)[-2:] == ["outcome", "trailer_bytes"]  # appended after the old fields
    assert motion["trailer_bytes"] == len(video) and motion["bytes_in"] == len(still + video)
    assert motion["image"] == {"width": 64, "height": 48}
    assert plain["trailer_bytes"] == 0
    assert health["trailer_bytes"] is None  # no image decoded
    assert refused["trailer_bytes"] is None and refused["outcome"] == "unsupported_media_type"
    assert canary not in out + err + caplog.text
