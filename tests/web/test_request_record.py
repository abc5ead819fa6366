"""The request record: one per request, its id from a sane X-Request-ID, and the one place the
audit line, the metrics and the error mapper read what a request did."""

from __future__ import annotations

import re

import pytest

from tests.support import images
from web.request_record import RequestRecord, current_record


@pytest.mark.parametrize("incoming", ["0123456789abcdef0123456789abcdef", "trace-1.2:3_x"])
def test_a_sane_incoming_id_is_kept(incoming):
    assert RequestRecord.start(incoming).request_id == incoming


@pytest.mark.parametrize("incoming", ["", "two words", "x" * 129, "-leading", "a\nb"])
def test_anything_else_gets_an_id_of_our_own(incoming):
    record = RequestRecord.start(incoming)
    assert re.fullmatch(r"[0-9a-f]{32}", record.request_id)
    assert RequestRecord.start(incoming).request_id != record.request_id


def test_a_record_starts_empty():
    record = RequestRecord.start("")
    assert (record.identity, record.api_key_id, record.bytes_in) == (None, None, 0)
    assert (record.image_size, record.persons, record.error_code) == (None, None, None)
    assert record.retry_after is None and not record.audited


def test_one_record_per_request_even_without_the_first_hook(app):
    with app.test_request_context("/healthz"):
        record = current_record()
        assert current_record() is record
    with app.test_request_context("/healthz"):
        assert current_record() is not record


def test_the_view_fills_the_record_the_audit_line_reads(app):
    seen: list[RequestRecord] = []

    @app.after_request
    def _keep(response):
        seen.append(current_record())
        return response

    data = images.png(160, 120)
    r = app.test_client().post("/api/v1/parse?output=json", data=data, content_type="image/png")
    assert r.status_code == 200
    (record,) = seen
    assert record.request_id == r.headers["X-Request-ID"] == r.get_json()["request_id"]
    assert record.identity is not None and record.identity.subject == "ip:127.0.0.1"
    assert (record.bytes_in, record.image_size) == (len(data), (160, 120))
    assert record.persons == len(r.get_json()["persons"])
    assert record.error_code is None and record.retry_after is None
