"""ParseService: the ban strikes of invalid uploads go to the ban list it holds, for the
identity the caller names, with no request context needed."""

from __future__ import annotations

import pytest

from security.abuse import Identity
from security.errors import UnsupportedMediaType
from tests.support import images
from web.inputs import Upload


def test_invalid_uploads_strike_the_identity_given(make_app):
    service = make_app(ban_after=2).extensions["m2fp_service"]
    client = Identity("ip:192.0.2.9", "5 per minute")
    other = Identity("key:editor", "5 per minute", "editor")
    text = Upload(images.TEXT, "image/png", None)
    for _ in range(2):
        with pytest.raises(UnsupportedMediaType):
            service.decode(text, client)
    assert service.bans.retry_after(client.subject) is not None
    assert service.bans.retry_after(other.subject) is None
    decoded = service.decode(Upload(images.png(64, 48), "image/png", None), other)
    assert decoded.original_size == (64, 48)
    assert service.bans.retry_after(other.subject) is None
