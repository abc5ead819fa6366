"""Schemathesis against the real app: the schema says what the validation
does. Every operation of `/api/v1/openapi.json`, whatever the document lists, with requests
drawn from the document and sent over a socket on 127.0.0.1 to the app with the tiny model:
no 5xx, every status, content type, header and body as documented, and no schema-valid
request refused (`positive_data_acceptance`: no 400, 413, 415 or 422 for a request the
document allows).

What no schema keyword can say, that an image must be a JPEG, PNG or WebP that decodes, is
supplied here: wherever the document says an image goes (a raw body of an image type or
`application/octet-stream`, a multipart part of one of those types, a base64 `format: byte`
string) schemathesis draws from real images, among them phone photos with data after the image.
Everything else (which operation, which options and values, which body form, the lengths) is
drawn from the document. A fixed seed and no example database: the same requests on every
run.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core import media_types
from schemathesis.specs.openapi import formats
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from werkzeug.serving import make_server

from m2fp.labelsets import LABEL_SETS
from tests.support import images
from tests.support.servers import serving

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    positive_data_acceptance,
]
# Query parameters that exclude each other: OpenAPI 3.1 cannot say so of two parameters, the
# document says it in words ("not both"), tests/web/test_api.py checks the 400.
NOT_TOGETHER = [{"instances", "person_masks"}]
# Requests per operation: 20 to 25 s for the whole document on a shared 2-core machine.
MAX_EXAMPLES = 30
SEED = 16


def _uploads() -> dict[str, list[bytes]]:
    """Real images by media type: small (the tiny model answers in milliseconds), of each
    format, some with data after the image."""
    return {
        "image/jpeg": [
            images.sample("image/jpeg"),
            images.photo(96, 72, "JPEG"),
            images.motion_photo("samsung"),
            images.ultra_hdr(),
        ],
        "image/png": [images.sample("image/png"), images.photo(80, 60), images.palette_png(True)],
        "image/webp": [images.sample("image/webp"), images.photo(72, 54, "WEBP")],
    }


def _allowed_together(case: schemathesis.Case) -> bool:
    """What the document says in words because OpenAPI 3.1 cannot say it of two parameters:
    a pair that excludes each other, and `classes` naming classes of the request's `labels`
    (the pattern lists every set's keys; tests/web/test_api.py checks the 400)."""
    query = case.query or {}
    if any(pair <= set(query) for pair in NOT_TOGETHER):
        return False
    if "classes" not in query:
        return True
    labels = LABEL_SETS[query.get("labels", "cihp")]
    for token in str(query["classes"]).split(","):
        try:
            labels.class_id(token)
        except (KeyError, ValueError):
            return False
    return True


@pytest.fixture
def real_images() -> Iterator[None]:
    """Image strategies for the image media types and for `format: byte`; schemathesis's
    registries are restored afterwards."""
    uploads = _uploads()
    every = [data for group in uploads.values() for data in group]
    saved = dict(media_types.MEDIA_TYPE_STRATEGIES), dict(formats.STRING_FORMATS)
    for mime, group in uploads.items():
        schemathesis.openapi.media_type(mime, st.sampled_from(group))
    schemathesis.openapi.media_type("application/octet-stream", st.sampled_from(every))
    encoded = [base64.b64encode(data).decode() for data in every]
    data_urls = [
        f"data:{mime};base64,{base64.b64encode(data).decode()}"
        for mime, group in uploads.items()
        for data in group
    ]
    schemathesis.openapi.format("byte", st.sampled_from(encoded + data_urls))
    yield
    media_types.MEDIA_TYPE_STRATEGIES.clear()
    media_types.MEDIA_TYPE_STRATEGIES.update(saved[0])
    formats.STRING_FORMATS.clear()
    formats.STRING_FORMATS.update(saved[1])
    formats._invalidate_caches()


def test_schema_valid_requests_are_accepted_and_answered_as_documented(make_app, real_images):
    app = make_app(rate_limit="1000000 per minute", ban_after=1_000_000)
    with serving(make_server("127.0.0.1", 0, app, threaded=True)) as server:
        base = f"http://127.0.0.1:{server.server_port}"
        # fetched from the server (from_url would leave out the document's own operation)
        document = requests.get(base + "/api/v1/openapi.json", timeout=30).json()
        schema = schemathesis.openapi.from_dict(document)
        failures, tested, accepted = [], set(), set()
        for result in schema.get_all_operations():
            operation = result.ok()
            tested.add(operation.label)

            @seed(SEED)
            @settings(
                max_examples=MAX_EXAMPLES,
                deadline=None,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy().filter(_allowed_together))
            def run(case: schemathesis.Case) -> None:
                response = case.call_and_validate(base_url=base, checks=CHECKS, timeout=60)
                if response.status_code < 300 and case.media_type:
                    accepted.add((case.operation.label, case.media_type))

            try:
                run()
            except Exception as exc:  # every operation runs; all failures are reported
                failures.append(f"{operation.label}: {exc}")
    paths = document["paths"]
    assert tested == {f"{method.upper()} {path}" for path, ops in paths.items() for method in ops}
    # every form of every request body was sent, and answered 2xx, at least once
    assert accepted == {
        (f"{method.upper()} {path}", media_type)
        for path, ops in paths.items()
        for method, op in ops.items()
        for media_type in op.get("requestBody", {}).get("content", {})
    }
    assert not failures, "\n\n".join(failures)
