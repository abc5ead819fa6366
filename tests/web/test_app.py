"""create_app (app.py): the environment reaches the app, its request class and its service.
Configuration errors are tests/test_settings.py; gunicorn.conf.py is
tests/deploy/test_gunicorn_conf.py."""

from __future__ import annotations

from web.context import FORM_OVERHEAD, InMemoryRequest


def test_environment_is_read(monkeypatch, make_app):
    monkeypatch.setenv("M2FP_RATE_LIMIT", "7 per hour")
    monkeypatch.setenv("M2FP_MAX_UPLOAD_MB", "2")
    app = make_app()
    settings = app.extensions["m2fp_settings"]
    assert settings.rate_limit == "7 per hour"
    assert app.config["MAX_CONTENT_LENGTH"] == 2 * 1024 * 1024 + FORM_OVERHEAD
    assert app.request_class is InMemoryRequest
    assert app.extensions["m2fp"] is app.extensions["m2fp_service"].engine
